//! One client connection: a reader that frames requests and hands them to the engine, and a
//! writer that sends the replies in request order.
//!
//! A connection is closed when no request line ends on it for `idle_close` (whether or not part
//! of a line came), when its replies cannot be written for `idle_close` (the client does not
//! read them), or when its partial line would take all connections' partial lines past their
//! total (`overloaded`). Each of these gives its slot and its memory back.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout};

use super::limits::{LineBudget, PARTIAL_LINES_PER_MAX_LINE};
use super::{PIPELINE_DEPTH, ServerSettings};
use crate::engine::{Client, EngineHandle, Reply};
use crate::protocol::{ErrorCode, ErrorReply, Framer, decode_request, encode_error, encode_ok};

/// Bytes read from a connection at once.
const READ_CHUNK: usize = 64 * 1024;

enum Pending {
    Ready(Vec<u8>),
    Waiting(Value, oneshot::Receiver<Reply>),
}

/// An error reply the server answers itself, counted in `stats`.
fn error_line(engine: &EngineHandle, id: &Value, e: &ErrorReply) -> Vec<u8> {
    engine.count_error(e.code);
    encode_error(id, e)
}

pub(super) async fn connection(
    stream: UnixStream,
    engine: EngineHandle,
    settings: Arc<ServerSettings>,
    lines: Arc<LineBudget>,
    stop: watch::Receiver<bool>,
) {
    let groups = super::peer_groups(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let client = match stream.peer_cred() {
        Ok(c) => Client {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid().unwrap_or(0),
        },
        Err(_) => return,
    };
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(PIPELINE_DEPTH);
    let writer = tokio::spawn(write_replies(wr, rx, engine.clone(), settings.idle_close));

    if !settings.access.allows(&client, groups.as_deref()) {
        tracing::debug!(uid = client.uid, pid = client.pid, "refused a client");
        let e = ErrorReply::new(ErrorCode::Forbidden, "this user may not use precog");
        let _ = tx
            .send(Pending::Ready(error_line(&engine, &Value::Null, &e)))
            .await;
        drop(tx);
        let _ = writer.await;
        // Read what the client sends before closing: a client refused before its first request
        // arrived would otherwise meet a closed socket and never read the reply saying why.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let mut sink = [0u8; 4096];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        return;
    }

    read_requests(&mut rd, &tx, &engine, client, &settings, &lines, stop).await;
    drop(tx);
    let _ = writer.await;
}

/// Reads and hands on requests until the connection ends or is to be closed.
async fn read_requests(
    rd: &mut (impl AsyncRead + Unpin),
    tx: &mpsc::Sender<Pending>,
    engine: &EngineHandle,
    client: Client,
    settings: &ServerSettings,
    lines: &Arc<LineBudget>,
    mut stop: watch::Receiver<bool>,
) {
    let mut framer = Framer::new(settings.max_line);
    let mut share = lines.share();
    let lines_total = settings.max_line.saturating_mul(PARTIAL_LINES_PER_MAX_LINE);
    let mut buf = vec![0u8; READ_CHUNK];
    // A connection on which no request line ends for `idle_close` gives its slot back; clients
    // reconnect when they need to. Time the connection spends not being read because its
    // replies back up does not count: the deadline is set afresh once the lines read are
    // handed on.
    let idle = tokio::time::sleep(settings.idle_close);
    tokio::pin!(idle);
    loop {
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = stop.changed() => return,
            _ = &mut idle => {
                let partial = framer.pending();
                tracing::debug!(pid = client.pid, partial, "closed an idle connection");
                return;
            }
            // The writer gave up: the client does not take its replies.
            _ = tx.closed() => return,
        };
        framer.push(&buf[..n]);
        let mut ended = false;
        while let Some(line) = framer.next_line() {
            ended = true;
            let pending = match line {
                Err(_) => {
                    let e = ErrorReply::new(
                        ErrorCode::TooLarge,
                        format!("a request line may be at most {} bytes", settings.max_line),
                    );
                    let _ = tx
                        .send(Pending::Ready(error_line(engine, &Value::Null, &e)))
                        .await;
                    return;
                }
                Ok(line) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(line) => match decode_request(&line) {
                    Err((id, e)) => Pending::Ready(error_line(engine, &id, &e)),
                    Ok(req) => Pending::Waiting(req.id, engine.request(req.op, client).await),
                },
            };
            if tx.send(pending).await.is_err() {
                return;
            }
        }
        if ended {
            let at = crate::pool::later(std::time::Instant::now(), settings.idle_close);
            idle.as_mut().reset(Instant::from_std(at));
        }
        if !share.set(framer.pending(), lines_total) {
            let e = ErrorReply::new(
                ErrorCode::Overloaded,
                "precogd holds too many unfinished request lines; try again later",
            );
            let _ = tx
                .send(Pending::Ready(error_line(engine, &Value::Null, &e)))
                .await;
            return;
        }
    }
}

/// Writes replies in request order. Gives up (and so closes the connection) when a reply
/// cannot be written within `limit`: a client that does not read its replies would otherwise
/// hold its slot, and the replies waiting for it, for good.
async fn write_replies(
    wr: impl AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<Pending>,
    engine: EngineHandle,
    limit: Duration,
) {
    let mut out = BufWriter::new(wr);
    while let Some(p) = rx.recv().await {
        let bytes = match p {
            Pending::Ready(b) => b,
            Pending::Waiting(id, reply) => match reply.await {
                Ok(Ok(fields)) => encode_ok(&id, fields),
                Ok(Err(e)) => encode_error(&id, &e),
                Err(_) => error_line(
                    &engine,
                    &id,
                    &ErrorReply::new(ErrorCode::ShuttingDown, "precogd is stopping"),
                ),
            },
        };
        let written = match timeout(limit, out.write_all(&bytes)).await {
            Ok(Ok(())) if rx.is_empty() => timeout(limit, out.flush()).await,
            other => other,
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!("closed a connection whose replies were not read");
                return;
            }
        }
    }
    let _ = timeout(limit, async {
        let _ = out.flush().await;
        let _ = out.shutdown().await;
    })
    .await;
}

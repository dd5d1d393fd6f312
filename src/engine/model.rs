//! Saving the learned model to `state_dir/model.bin` without holding up requests. A full model
//! holds a million contexts and takes about half a second to encode, so it is encoded a slice
//! at a time ([`crate::predict::ModelSave`]) whenever the engine has nothing else to do (and at
//! least one slice a second under load), and the file is written on a blocking thread. At the
//! stop it is saved whole, at once.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::Engine;
use crate::predict::ModelSave;

/// Contexts encoded per slice: about a millisecond of work.
const SLICE: usize = 2048;

/// One writer of `model.bin` at a time: a save finishing in the background and the one at the
/// stop share the temporary file.
static WRITING: Mutex<()> = Mutex::new(());

/// A save under way.
pub(super) struct Saving {
    save: ModelSave,
    began: Instant,
}

impl Engine {
    /// Begins a save once `save_interval` has passed since the last, unless one is under way.
    pub(super) fn maybe_begin_model_save(&mut self) {
        if self.model_save.is_none()
            && self.last_model_save.elapsed() >= self.config.predict.save_interval.0
        {
            self.model_save = Some(Saving {
                save: self.predictor.save_begin(),
                began: Instant::now(),
            });
        }
    }

    /// Whether a save is under way.
    pub(super) fn saving_model(&self) -> bool {
        self.model_save.is_some()
    }

    /// Encodes one more slice of the save under way; after the last, writes the file on a
    /// blocking thread.
    pub(super) fn continue_model_save(&mut self) {
        let Some(saving) = self.model_save.as_mut() else {
            return;
        };
        if !self.predictor.save_some(&mut saving.save, SLICE) {
            return;
        }
        let Saving { save, began } = self.model_save.take().expect("a save under way");
        let unsealed = self.predictor.save_finish(save);
        let encoded_ms = began.elapsed().as_millis() as u64;
        self.last_model_save = Instant::now();
        let dir = self.config.daemon.state_dir.clone();
        let warned = self.model_warned.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = unsealed.seal();
            let done = write_model(&dir, &bytes);
            report(done, &dir, bytes.len(), encoded_ms, &warned);
        });
    }

    /// Drops a save under way (a reload may give run-model ids to other processes); the next
    /// tick begins a new one.
    pub(super) fn restart_model_save(&mut self) {
        self.model_save = None;
    }

    /// Saves the whole model at once, as at the stop.
    pub(super) fn save_model(&mut self) {
        self.model_save = None;
        self.last_model_save = Instant::now();
        let bytes = self.predictor.save();
        let dir = &self.config.daemon.state_dir;
        report(
            write_model(dir, &bytes),
            dir,
            bytes.len(),
            0,
            &self.model_warned,
        );
    }
}

/// Logs how a save went; a failure is a warning once, until a save succeeds again.
fn report(
    done: std::io::Result<()>,
    dir: &Path,
    bytes: usize,
    encoded_ms: u64,
    warned: &Arc<AtomicBool>,
) {
    match done {
        Ok(()) => {
            warned.store(false, Ordering::Relaxed);
            tracing::debug!(bytes, encoded_ms, "model saved");
        }
        Err(e) => {
            if !warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot save the model");
            }
        }
    }
}

/// Writes `bytes` as `dir/model.bin`, atomically: a new file, renamed. A symlink planted where
/// the new file is written is refused, not followed.
fn write_model(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _one = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("model.bin.new");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?
        .write_all(bytes)?;
    std::fs::rename(&tmp, dir.join("model.bin"))
}

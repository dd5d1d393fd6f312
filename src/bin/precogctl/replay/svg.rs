//! The latency chart: one cumulative distribution line per mode on a logarithmic latency axis,
//! written as plain SVG so it opens in any browser. Pure.

use std::fmt::Write as _;

use super::report::ModeReport;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 5] = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e"];
/// Points per line: enough for a smooth curve, few enough for a small file.
const POINTS: usize = 400;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart of every mode's run latencies (each `latencies_us` sorted).
pub fn chart(title: &str, modes: &[ModeReport]) -> String {
    let all = modes.iter().flat_map(|m| m.latencies_us.iter().copied());
    let (lo, hi) = all.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo_dec = (lo.max(1) as f64).log10().floor();
    let hi_dec = (hi.max(10) as f64).log10().ceil().max(lo_dec + 1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |us: u64| LEFT + ((us.max(1) as f64).log10() - lo_dec) / (hi_dec - lo_dec) * plot_w;
    let y = |share: f64| TOP + (1.0 - share) * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        s,
        "<rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        WIDTH / 2.0,
        escape(title)
    );

    let mut decade = lo_dec;
    while decade <= hi_dec {
        let us = 10f64.powf(decade) as u64;
        let px = x(us);
        let label = match us {
            u if u >= 1_000_000 => format!("{} s", u / 1_000_000),
            u if u >= 1_000 => format!("{} ms", u / 1_000),
            u => format!("{u} µs"),
        };
        let _ = writeln!(
            s,
            "<line x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            TOP + plot_h,
            TOP + plot_h + 16.0
        );
        decade += 1.0;
    }
    for tenth in 0..=10 {
        let share = tenth as f64 / 10.0;
        let py = y(share);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#eee\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}%</text>",
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            tenth * 10
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" \
         stroke=\"#333\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">run latency seen by the app \
         (log scale)</text>\n\
         <text transform=\"translate(18 {:.1}) rotate(-90)\" text-anchor=\"middle\">runs answered \
         within that time</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0,
        TOP + plot_h / 2.0
    );

    for (i, m) in modes.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let n = m.latencies_us.len();
        let step = (n / POINTS).max(1);
        let mut points = String::new();
        for k in (0..n).step_by(step).chain(n.checked_sub(1)) {
            let _ = write!(
                points,
                "{:.1},{:.1} ",
                x(m.latencies_us[k]),
                y((k + 1) as f64 / n as f64)
            );
        }
        let _ = writeln!(
            s,
            "<polyline class=\"series\" data-mode=\"{mode}\" fill=\"none\" stroke=\"{colour}\" \
             stroke-width=\"2\" points=\"{}\"/>",
            points.trim_end(),
            mode = escape(&m.mode)
        );
        let ly = TOP + 16.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" \
             stroke-width=\"3\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{} (mean {:.0} µs)</text>",
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(&m.mode),
            m.latency_us.mean
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_and_one_legend_entry_per_mode() {
        let modes: Vec<ModeReport> = ["precog", "spawn"]
            .iter()
            .map(|name| ModeReport {
                mode: name.to_string(),
                latencies_us: vec![50, 80, 2000, 9000],
                ..ModeReport::default()
            })
            .collect();
        let svg = chart("a <b> & c", &modes);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("data-mode=\"spawn\""));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert!(svg.contains("10 ms"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}

//! The two plots of `docs/benchmarks.md`, as PNG (plotters, bitmap backend;
//! text in DejaVu Sans, read from the system's fonts).

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::measure::{Progress, ProgressSample, Samples};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT)
        .map_err(|error| anyhow::anyhow!("{FONT}: {error}; install fonts-dejavu-core for the plots"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    let _ = REGISTERED.set(());
    Ok(())
}

/// The share of events (y, %) that arrived within x milliseconds, for the
/// outbox run and the HTTP run.
pub fn latency(path: &Path, outbox: &Samples, http: &Samples) -> anyhow::Result<()> {
    register_font()?;
    let cdf = |samples: &Samples| -> Vec<(f64, f64)> {
        let mut sorted = samples.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len().max(1) as f64;
        sorted
            .iter()
            .enumerate()
            .map(|(i, ms)| (*ms, (i + 1) as f64 / n * 100.0))
            .collect()
    };
    let (outbox_cdf, http_cdf) = (cdf(outbox), cdf(http));
    let max_ms = outbox_cdf
        .iter()
        .chain(&http_cdf)
        .map(|(ms, _)| *ms)
        .fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("End-to-end latency: share of events applied within", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_ms * 1.05, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds from commit or 2xx to applied")
        .y_desc("% of events")
        .label_style(("sans-serif", 14))
        .draw()?;
    let series = [
        (outbox_cdf, format!("outbox, {:.0} events/s", outbox.rate()), BLUE),
        (http_cdf, format!("HTTP, {:.0} events/s", http.rate()), RED),
    ];
    draw_lines(&mut chart, series, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// Events appended to the outbox, published by the relay and applied by
/// the consumer, per second, over the pipeline run: each point is the rate
/// over the last five samples (half a second).
pub fn throughput(path: &Path, progress: &Progress) -> anyhow::Result<()> {
    register_font()?;
    let rate = |pick: fn(&ProgressSample) -> i64| -> Vec<(f64, f64)> {
        progress
            .samples
            .windows(6)
            .map(|window| {
                let (first, last) = (&window[0], &window[window.len() - 1]);
                (
                    last.seconds,
                    (pick(last) - pick(first)) as f64 / (last.seconds - first.seconds).max(f64::EPSILON),
                )
            })
            .collect()
    };
    let appended = rate(|sample| sample.appended);
    let published = rate(|sample| sample.published);
    let rates = rate(|sample| sample.applied);
    let max_t = rates.last().map_or(1.0, |(t, _)| *t);
    let max_rate = rates
        .iter()
        .chain(&published)
        .chain(&appended)
        .map(|(_, r)| *r)
        .fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (900, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Pipeline throughput: events per second", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..max_rate * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first append")
        .y_desc("events/s")
        .label_style(("sans-serif", 14))
        .draw()?;
    let series = [
        (appended, "appended to the outbox".to_owned(), GREEN),
        (published, "published by the relay".to_owned(), RED),
        (rates, "applied by the consumer".to_owned(), BLUE),
    ];
    draw_lines(&mut chart, series, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

/// One line of a plot: its points, its legend label and its color.
type Line = (Vec<(f64, f64)>, String, RGBColor);

/// Draws each line, with a legend at `position`.
fn draw_lines<'a, const N: usize>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    series: [Line; N],
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    for (points, label, color) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

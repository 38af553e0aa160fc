//! The status page's charts, drawn by plotters as inline SVG: a line with a point a run (a sync's audience), and
//! bars a run, up for what it added or sent and down for what it removed. The page wraps them in its own markup;
//! plotters escapes the text it writes (the axis labels, which are numbers and times).

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const SIZE: (u32, u32) = (560, 220);
const FONT: (&str, u32) = ("sans-serif", 12);
const BLUE: RGBColor = RGBColor(21, 101, 192);
const GREEN: RGBColor = RGBColor(46, 125, 50);
const RED: RGBColor = RGBColor(198, 40, 40);
const GRID: RGBColor = RGBColor(224, 224, 224);

/// One run on a chart: its label on the x axis, and its values.
pub struct Run {
    pub label: String,
    /// The point on a line chart; what a bar chart draws up.
    pub up: u64,
    /// What a bar chart draws down.
    pub down: u64,
}

type Drawn = Result<(), Box<dyn std::error::Error>>;
/// A chart of runs (x) against counts (y).
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A line through `runs`' values, with a circle at each: the only circles the chart draws, one a run.
pub fn line(runs: &[Run]) -> String {
    let top = runs.iter().map(|r| r.up).max().unwrap_or(0) as f64;
    svg(|area| {
        let mut chart = axes(area, runs, 0.0..headroom(top))?;
        let points = || {
            runs.iter()
                .enumerate()
                .map(|(i, r)| (i as f64, r.up as f64))
        };
        chart.draw_series(LineSeries::new(points(), BLUE.stroke_width(2)))?;
        chart.draw_series(points().map(|p| Circle::new(p, 4, BLUE.filled())))?;
        Ok(())
    })
}

/// A bar up for each run's `up` and a bar down for its `down`.
pub fn bars(runs: &[Run]) -> String {
    let up = runs.iter().map(|r| r.up).max().unwrap_or(0) as f64;
    let down = runs.iter().map(|r| r.down).max().unwrap_or(0) as f64;
    let bottom = if down > 0.0 { -headroom(down) } else { 0.0 };
    svg(|area| {
        let mut chart = axes(area, runs, bottom..headroom(up))?;
        let bar = |i: usize, value: f64, color: RGBColor| {
            let x = i as f64;
            Rectangle::new([(x - 0.3, 0.0), (x + 0.3, value)], color.filled())
        };
        chart.draw_series(
            runs.iter()
                .enumerate()
                .map(|(i, r)| bar(i, r.up as f64, GREEN)),
        )?;
        chart.draw_series(
            runs.iter()
                .enumerate()
                .map(|(i, r)| bar(i, -(r.down as f64), RED)),
        )?;
        Ok(())
    })
}

/// The top of an axis whose largest value is `max`: a little above it, and never zero.
fn headroom(max: f64) -> f64 {
    (max * 1.1).max(1.0)
}

/// Draws with `draw` into an SVG document, or says why it could not.
fn svg(draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Drawn) -> String {
    let mut svg = String::new();
    let drawn = {
        let area = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&area).and_then(|()| Ok(area.present()?))
    };
    match drawn {
        Ok(()) => svg,
        Err(e) => maud::html! { p.error { "The chart could not be drawn: " (e) } }.into_string(),
    }
}

/// The chart's frame: a run a step on the x axis, labelled by the runs' labels, and `y` on the y axis.
fn axes<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    runs: &'a [Run],
    y: std::ops::Range<f64>,
) -> Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5..(runs.len() as f64 - 0.5), y)?;
    let label = |x: &f64| {
        let i = x.round();
        let whole = (x - i).abs() < 1e-6 && i >= 0.0;
        whole
            .then(|| runs.get(i as usize).map(|r| r.label.clone()))
            .flatten()
            .unwrap_or_default()
    };
    let count = |y: &f64| {
        if (y - y.round()).abs() < 1e-6 {
            format!("{}", y.round().abs())
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(GRID)
        .bold_line_style(GRID)
        .x_labels(runs.len().clamp(2, 6))
        .y_labels(5)
        .x_label_formatter(&label)
        .y_label_formatter(&count)
        .label_style(FONT)
        .draw()?;
    Ok(chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(values: &[(u64, u64)]) -> Vec<Run> {
        values
            .iter()
            .enumerate()
            .map(|(i, &(up, down))| Run {
                label: format!("run {i}"),
                up,
                down,
            })
            .collect()
    }

    #[test]
    fn a_line_has_one_circle_a_run() {
        for values in [&[(40, 0)][..], &[(40, 0), (38, 0), (45, 0)], &[(0, 0); 12]] {
            let svg = line(&runs(values));
            assert!(svg.starts_with("<svg"), "{svg}");
            assert_eq!(svg.matches("<circle").count(), values.len(), "{svg}");
        }
    }

    #[test]
    fn bars_carry_the_runs_labels_and_counts() {
        let svg = bars(&runs(&[(10, 0), (0, 4)]));
        assert!(svg.contains("<rect"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 0);
        for label in ["run 0", "run 1"] {
            assert!(
                svg.contains(&format!(">\n{label}\n<")),
                "no {label} in {svg}"
            );
        }
    }
}

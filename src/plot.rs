//! PNG plots drawn with plotters into a pixel buffer and encoded by `image`
//! (no Python, no system fonts: DejaVu Sans is embedded).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::train::EpochRow;

static FONT: Once = Once::new();
const W: u32 = 900;
const H: u32 = 560;

fn register_font() {
    FONT.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../assets/fonts/DejaVuSans.ttf"),
        );
    });
}

/// Draws with `draw` into a W×H RGB buffer and writes it as PNG, atomically.
fn render(
    path: &Path,
    w: u32,
    h: u32,
    draw: impl FnOnce(
        DrawingArea<BitMapBackend, plotters::coord::Shift>,
    ) -> std::result::Result<(), String>,
) -> Result<()> {
    register_font();
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| Error::file(path, format!("cannot draw: {e}")))?;
        draw(root.clone()).map_err(|e| Error::file(path, format!("cannot draw: {e}")))?;
        root.present()
            .map_err(|e| Error::file(path, format!("cannot draw: {e}")))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| Error::file(path, "plot buffer has the wrong size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::file(path, format!("cannot encode PNG: {e}")))?;
    fsutil::write_atomic(path, &png)
}

fn e<T: std::fmt::Display>(x: T) -> String {
    x.to_string()
}

/// Loss against learning rate (log axis), raw and smoothed, with the suggestion marked.
pub fn lr_curve(path: &Path, points: &[(f64, f64, f64)], suggested: f64) -> Result<()> {
    let finite: Vec<&(f64, f64, f64)> = points
        .iter()
        .filter(|p| p.2.is_finite() && p.1.is_finite())
        .collect();
    let lo = finite.iter().map(|p| p.2).fold(f64::INFINITY, f64::min);
    let first = finite.first().map(|p| p.2).unwrap_or(1.0);
    let hi = finite
        .iter()
        .map(|p| p.2)
        .fold(f64::NEG_INFINITY, f64::max)
        .min(first * 2.0)
        .max(lo + 1e-6);
    let (x0, x1) = (
        points.first().map(|p| p.0).unwrap_or(1e-6),
        points.last().map(|p| p.0).unwrap_or(1.0).max(1e-5),
    );
    render(path, W, H, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "lr-find: training loss vs learning rate",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(
                (x0..x1).log_scale(),
                (lo - 0.05 * (hi - lo))..(hi + 0.05 * (hi - lo)),
            )
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("learning rate (log scale)")
            .y_desc("loss")
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                finite.iter().map(|p| (p.0, p.1.clamp(lo, hi))),
                RGBColor(180, 180, 220).stroke_width(1),
            ))
            .map_err(e)?
            .label("loss per step")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(180, 180, 220)));
        chart
            .draw_series(LineSeries::new(
                finite.iter().map(|p| (p.0, p.2.clamp(lo, hi))),
                BLUE.stroke_width(2),
            ))
            .map_err(e)?
            .label("smoothed")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                vec![(suggested, lo), (suggested, hi)],
                RED.stroke_width(2),
            ))
            .map_err(e)?
            .label(format!("suggested {suggested:.1e}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        Ok(())
    })
}

/// Loss and accuracy per epoch, train and validation, stage boundaries marked.
pub fn learning_curves(path: &Path, rows: &[EpochRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len() as f64;
    let max_loss = rows
        .iter()
        .flat_map(|r| [Some(r.train_loss), r.val_loss])
        .flatten()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.05;
    let boundaries: Vec<f64> = rows
        .windows(2)
        .filter(|w| w[0].stage != w[1].stage)
        .map(|w| w[0].epoch as f64 + 0.5)
        .collect();
    render(path, W, H + 100, |root| {
        let (top, bottom) = root.split_vertically((H + 100) / 2);
        for (area, title, is_loss) in [(top, "loss", true), (bottom, "accuracy", false)] {
            let ymax = if is_loss { max_loss } else { 1.0 };
            let mut chart = ChartBuilder::on(&area)
                .caption(
                    if is_loss {
                        "learning curves: loss"
                    } else {
                        "accuracy (validation: plain and balanced)"
                    },
                    ("sans-serif", 18),
                )
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(0.5..n + 0.5, 0.0..ymax)
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc("epoch (grey lines: stage boundaries)")
                .y_desc(title)
                .x_labels(rows.len().min(20))
                .x_label_formatter(&|v| format!("{v:.0}"))
                .light_line_style(WHITE)
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(e)?;
            for b in &boundaries {
                chart
                    .draw_series(LineSeries::new(
                        vec![(*b, 0.0), (*b, ymax)],
                        BLACK.mix(0.45).stroke_width(2),
                    ))
                    .map_err(e)?;
            }
            let series: Vec<(&str, RGBColor, Box<dyn Fn(&EpochRow) -> Option<f64>>)> = if is_loss {
                vec![
                    ("train", BLUE, Box::new(|r: &EpochRow| Some(r.train_loss))),
                    ("validation", RED, Box::new(|r: &EpochRow| r.val_loss)),
                ]
            } else {
                vec![
                    ("train", BLUE, Box::new(|r: &EpochRow| Some(r.train_acc))),
                    ("validation", RED, Box::new(|r: &EpochRow| r.val_acc)),
                    (
                        "validation balanced",
                        RGBColor(0, 140, 0),
                        Box::new(|r: &EpochRow| r.val_bacc),
                    ),
                ]
            };
            for (name, color, f) in series {
                let pts: Vec<(f64, f64)> = rows
                    .iter()
                    .filter_map(|r| {
                        f(r).filter(|v| v.is_finite())
                            .map(|v| (r.epoch as f64, v.min(ymax)))
                    })
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(e)?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(e)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(e)?;
        }
        Ok(())
    })
}

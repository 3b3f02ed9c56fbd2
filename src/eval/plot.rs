//! PNG plots drawn with plotters into a pixel buffer and encoded by `image`
//! (no Python, no system fonts: DejaVu Sans is embedded).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::train::EpochRow;

/// A named, coloured curve: its value per epoch row.
type Series<'a> = (&'a str, RGBColor, Box<dyn Fn(&EpochRow) -> Option<f64>>);

static FONT: Once = Once::new();
const W: u32 = 900;
const H: u32 = 560;

pub(crate) fn register_font() {
    FONT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, include_bytes!("../../assets/fonts/DejaVuSans.ttf"));
    });
}

/// Draws with `draw` into a W×H RGB buffer and writes it as PNG, atomically.
fn render(path: &Path, w: u32, h: u32, draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> std::result::Result<(), String>) -> Result<()> {
    register_font();
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| Error::file(path, format!("cannot draw: {e}")))?;
        draw(root.clone()).map_err(|e| Error::file(path, format!("cannot draw: {e}")))?;
        root.present().map_err(|e| Error::file(path, format!("cannot draw: {e}")))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| Error::file(path, "plot buffer has the wrong size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| Error::file(path, format!("cannot encode PNG: {e}")))?;
    fsutil::write_atomic(path, &png)
}

fn e<T: std::fmt::Display>(x: T) -> String {
    x.to_string()
}

/// Every chart's legend: a framed, lightly shaded box at `at`, labels at `size` px.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    at: SeriesLabelPosition,
    size: u32,
) -> std::result::Result<(), String> {
    chart.configure_series_labels().position(at).background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", size)).draw().map_err(e)
}

/// Loss against learning rate (log axis), raw and smoothed, with the suggestion marked.
pub(crate) fn lr_curve(path: &Path, points: &[(f64, f64, f64)], suggested: f64) -> Result<()> {
    let finite: Vec<&(f64, f64, f64)> = points.iter().filter(|p| p.2.is_finite() && p.1.is_finite()).collect();
    let lo = finite.iter().map(|p| p.2).fold(f64::INFINITY, f64::min);
    let first = finite.first().map(|p| p.2).unwrap_or(1.0);
    let hi = finite.iter().map(|p| p.2).fold(f64::NEG_INFINITY, f64::max).min(first * 2.0).max(lo + 1e-6);
    // A log axis to an infinite rate never ends its ticks (lr-find refuses the rates that make one).
    let rates = || points.iter().map(|p| p.0).filter(|r| r.is_finite() && *r > 0.0);
    let (x0, x1) = (rates().next().unwrap_or(1e-6), rates().next_back().unwrap_or(1.0).max(1e-5));
    render(path, W, H, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption("lr-find: training loss vs learning rate", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d((x0..x1).log_scale(), (lo - 0.05 * (hi - lo))..(hi + 0.05 * (hi - lo)))
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
            .draw_series(LineSeries::new(finite.iter().map(|p| (p.0, p.1.clamp(lo, hi))), RGBColor(180, 180, 220).stroke_width(1)))
            .map_err(e)?
            .label("loss per step")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(180, 180, 220)));
        chart
            .draw_series(LineSeries::new(finite.iter().map(|p| (p.0, p.2.clamp(lo, hi))), BLUE.stroke_width(2)))
            .map_err(e)?
            .label("smoothed")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        // Raw losses outside the plotted range are clamped to its edge: mark them, not hide them.
        let out: Vec<(f64, f64)> = finite.iter().filter(|p| p.1 > hi || p.1 < lo).map(|p| (p.0, p.1.clamp(lo, hi))).collect();
        if !out.is_empty() {
            chart
                .draw_series(out.iter().map(|&(x, y)| TriangleMarker::new((x, y), 4, RGBColor(200, 100, 0).filled())))
                .map_err(e)?
                .label(format!("{} raw loss(es) off the scale (at its edge)", out.len()))
                .legend(|(x, y)| TriangleMarker::new((x + 10, y), 4, RGBColor(200, 100, 0).filled()));
        }
        chart
            .draw_series(LineSeries::new(vec![(suggested, lo), (suggested, hi)], RED.stroke_width(2)))
            .map_err(e)?
            .label(format!("suggested {suggested:.1e}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        legend(&mut chart, SeriesLabelPosition::MiddleRight, 14)?;
        Ok(())
    })
}

/// Loss and accuracy per epoch, train and validation; stage boundaries
/// marked with the block the next stage trains from, the kept epoch marked.
pub fn learning_curves(path: &Path, rows: &[EpochRow], kept: Option<usize>) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len() as f64;
    let max_loss = rows.iter().flat_map(|r| [Some(r.train_loss), r.val_loss]).flatten().filter(|v| v.is_finite()).fold(0.0f64, f64::max).max(1e-3) * 1.05;
    let boundaries: Vec<(f64, String)> =
        rows.windows(2).filter(|w| w[0].stage != w[1].stage).map(|w| (w[0].epoch as f64 + 0.5, format!("from {}", w[1].block))).collect();
    render(path, W, H + 100, |root| {
        let (top, bottom) = root.split_vertically((H + 100) / 2);
        for (area, title, is_loss) in [(top, "loss", true), (bottom, "accuracy", false)] {
            let ymax = if is_loss { max_loss } else { 1.0 };
            let mut chart = ChartBuilder::on(&area)
                .caption(if is_loss { "learning curves: loss" } else { "accuracy (validation: plain and balanced)" }, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(0.5..n + 0.5, 0.0..ymax)
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc("epoch (grey: stage boundaries; green dashes: the kept epoch)")
                .y_desc(title)
                .x_labels(rows.len().min(20))
                .x_label_formatter(&|v| format!("{v:.0}"))
                .light_line_style(WHITE)
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(e)?;
            for (b, label) in &boundaries {
                chart.draw_series(LineSeries::new(vec![(*b, 0.0), (*b, ymax)], BLACK.mix(0.45).stroke_width(2))).map_err(e)?;
                if is_loss {
                    chart.draw_series(std::iter::once(Text::new(label.clone(), (*b + 0.08, ymax * 0.97), ("sans-serif", 12)))).map_err(e)?;
                }
            }
            if let Some(k) = kept {
                let x = k as f64;
                let dashes = (0..20).map(|i| (x, ymax * i as f64 / 20.0)).collect::<Vec<_>>();
                chart.draw_series(dashes.chunks(2).map(|p| PathElement::new(p.to_vec(), RGBColor(0, 150, 0).stroke_width(2)))).map_err(e)?;
                if is_loss {
                    // Left of the line in the right half, so the label stays on the chart.
                    let right_half = x > n / 2.0;
                    let anchor = if right_half { HPos::Right } else { HPos::Left };
                    let style = ("sans-serif", 12).into_font().color(&RGBColor(0, 120, 0)).pos(Pos::new(anchor, VPos::Top));
                    let at = if right_half { x - 0.08 } else { x + 0.08 };
                    chart.draw_series(std::iter::once(Text::new(format!("kept: epoch {k}"), (at, ymax * 0.6), style))).map_err(e)?;
                }
            }
            let series: Vec<Series> = if is_loss {
                vec![("train", BLUE, Box::new(|r: &EpochRow| Some(r.train_loss))), ("validation", RED, Box::new(|r: &EpochRow| r.val_loss))]
            } else {
                vec![
                    ("train", BLUE, Box::new(|r: &EpochRow| Some(r.train_acc))),
                    ("validation", RED, Box::new(|r: &EpochRow| r.val_acc)),
                    ("validation balanced", RGBColor(0, 140, 0), Box::new(|r: &EpochRow| r.val_bacc)),
                ]
            };
            for (name, color, f) in series {
                let pts: Vec<(f64, f64)> = rows.iter().filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.epoch as f64, v.min(ymax)))).collect();
                if pts.is_empty() {
                    continue;
                }
                // Plain validation accuracy is drawn wide and pale under the
                // balanced one, so it stays visible where the two coincide.
                let width = if !is_loss && name == "validation" { 7 } else { 2 };
                let style = if width > 2 { color.mix(0.35).stroke_width(width) } else { color.stroke_width(width) };
                chart
                    .draw_series(LineSeries::new(pts.clone(), style))
                    .map_err(e)?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(e)?;
            }
            legend(&mut chart, if is_loss { SeriesLabelPosition::UpperRight } else { SeriesLabelPosition::LowerRight }, 13)?;
        }
        Ok(())
    })
}

/// The side of one cell of a confusion matrix of `c` classes: room for its
/// count and share up to 90 classes (3600 px); beyond, smaller cells that
/// keep the picture near 3600 px a side (a label column holding person ids,
/// ~1000 classes, drew 40000 px a side: ~5 GB of pixels), at least 1 px.
fn confusion_cell(c: usize) -> i32 {
    let cell = if c <= 90 { (360 / c.max(1)).clamp(40, 120) } else { (3600 / c).max(1) };
    i32::try_from(cell).unwrap_or(1)
}

/// A confusion matrix as a shaded grid with counts and row percentages
/// (rows: true, columns: predicted; the shade is the row fraction).
pub fn confusion(path: &Path, m: &[Vec<usize>], classes: &[String], title: &str) -> Result<()> {
    let c = classes.len();
    let cell = confusion_cell(c);
    // Counts and column names while they fit in a cell (row names in the margin a little longer); beyond, the shading alone.
    let (counts, names, borders) = (cell >= 40, cell >= 14, cell >= 6);
    let (left, top) = (150i32, 80i32);
    let w = (left + cell * c as i32 + 40) as u32;
    let h = (top + cell * c as i32 + 70) as u32;
    render(path, w.max(420), h, |root| {
        let font = |s: u32| ("sans-serif", s).into_font();
        root.draw(&Text::new(format!("confusion matrix: {title}"), (10, 10), font(16))).map_err(e)?;
        root.draw(&Text::new("predicted →", (left, top - 40), font(14))).map_err(e)?;
        root.draw(&Text::new("true ↓ (% of the row)", (10, top - 40), font(14))).map_err(e)?;
        for (i, row) in m.iter().enumerate() {
            let total = row.iter().sum::<usize>().max(1) as f64;
            if names {
                root.draw(&Text::new(classes[i].clone(), (10, top + cell * i as i32 + cell / 2 - 8), font(14))).map_err(e)?;
            }
            for (j, &v) in row.iter().enumerate() {
                let f = v as f64 / total;
                let shade = (255.0 - 200.0 * f) as u8;
                let (x, y) = (left + cell * j as i32, top + cell * i as i32);
                root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], RGBColor(shade, shade, 255).filled())).map_err(e)?;
                if borders {
                    root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], BLACK.stroke_width(1))).map_err(e)?;
                }
                if counts {
                    let color = if f > 0.6 { WHITE } else { BLACK };
                    root.draw(&Text::new(format!("{v}"), (x + cell / 2 - 10, y + cell / 2 - 16), font(16).color(&color))).map_err(e)?;
                    root.draw(&Text::new(format!("{:.0} %", 100.0 * f), (x + cell / 2 - 14, y + cell / 2 + 4), font(12).color(&color))).map_err(e)?;
                }
            }
        }
        for (j, name) in classes.iter().enumerate().filter(|_| counts) {
            root.draw(&Text::new(name.clone(), (left + cell * j as i32 + 4, top - 20), font(13))).map_err(e)?;
        }
        Ok(())
    })
}

/// ROC curve of `scores` for `positive`, with the AUC in the legend.
pub fn roc(path: &Path, positive: &[bool], scores: &[f64], title: &str) -> Result<()> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let np = positive.iter().filter(|&&p| p).count().max(1) as f64;
    let nn = positive.iter().filter(|&&p| !p).count().max(1) as f64;
    let mut pts = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut k = 0;
    while k < idx.len() {
        let s = scores[idx[k]];
        while k < idx.len() && scores[idx[k]] == s {
            if positive[idx[k]] {
                tp += 1.0
            } else {
                fp += 1.0
            }
            k += 1;
        }
        pts.push((fp / nn, tp / np));
    }
    let auc = crate::eval::roc_auc(positive, scores);
    render(path, 620, 600, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("false positive rate")
            .y_desc("true positive rate")
            .light_line_style(WHITE)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.4)))
            .map_err(e)?
            .label("chance")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
        chart
            .draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(2)))
            .map_err(e)?
            .label(format!("AUC {auc:.3}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        legend(&mut chart, SeriesLabelPosition::LowerRight, 14)?;
        Ok(())
    })
}

/// Balanced accuracy of each fold, one column per seed, with the mean and
/// chance: the balanced accuracy of one answer for every photo, 1/K — not the
/// majority class's accuracy, which is the baseline of plain accuracy.
pub(crate) fn spread(path: &Path, folds: &[(u64, usize, f64)], classes: usize) -> Result<()> {
    let chance = 1.0 / classes.max(1) as f64;
    let seeds: Vec<u64> = folds.iter().map(|f| f.0).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let palette = [BLUE, RED, RGBColor(0, 140, 0), RGBColor(200, 120, 0), MAGENTA, CYAN];
    render(path, 760, 520, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption("balanced accuracy per fold (dots, numbered by fold) and mean per seed (bar)", ("sans-serif", 16))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.5..seeds.len() as f64 - 0.5, 0.0..1.05)
            .map_err(e)?;
        let seed_names = seeds.clone();
        chart
            .configure_mesh()
            .x_desc("seed")
            .y_desc("balanced accuracy")
            .x_labels(seeds.len().max(1))
            .x_label_formatter(&|v| seed_names.get(v.round() as usize).map(|s| s.to_string()).unwrap_or_default())
            .light_line_style(WHITE)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(vec![(-0.5, chance), (seeds.len() as f64 - 0.5, chance)], BLACK.mix(0.5).stroke_width(2)))
            .map_err(e)?
            .label(format!("chance (one answer for all) {chance:.2}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5).stroke_width(2)));
        for (si, seed) in seeds.iter().enumerate() {
            let color = palette[si % palette.len()];
            let vals: Vec<f64> = folds.iter().filter(|f| f.0 == *seed).map(|f| f.2).filter(|v| v.is_finite()).collect();
            let n = vals.len().max(1) as f64;
            let pts: Vec<(f64, f64)> = vals.iter().enumerate().map(|(k, &v)| (si as f64 - 0.25 + 0.5 * (k as f64 + 0.5) / n, v)).collect();
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled()))).map_err(e)?;
            // Which dot is which fold.
            let folds_of: Vec<usize> = folds.iter().filter(|f| f.0 == *seed && f.2.is_finite()).map(|f| f.1).collect();
            chart
                .draw_series(
                    pts.iter().zip(&folds_of).map(|(p, f)| Text::new(format!("{f}"), (p.0 + 0.02, p.1 + 0.03), ("sans-serif", 13).into_font().color(&color))),
                )
                .map_err(e)?;
            let mean = vals.iter().sum::<f64>() / n;
            chart.draw_series(LineSeries::new(vec![(si as f64 - 0.3, mean), (si as f64 + 0.3, mean)], color.stroke_width(3))).map_err(e)?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight, 13)?;
        Ok(())
    })
}

/// One horizontal bar per subject (worst at the top): balanced accuracy
/// with the image count beside it, so the people a model fails on stand out.
pub fn subjects(path: &Path, rows: &[(String, f64, usize)], title: &str) -> Result<()> {
    let n = rows.len().max(1);
    let h = (90 + 18 * n as u32).min(8000);
    render(path, 760, h, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(110)
            .build_cartesian_2d(0.0..1.12, (0..n).into_segmented())
            .map_err(e)?;
        // Segment 0 is drawn at the bottom: the worst (first) row takes the top one.
        let at = |i: usize| n - 1 - i;
        let names: Vec<String> = rows.iter().rev().map(|r| r.0.clone()).collect();
        chart
            .configure_mesh()
            .x_desc("balanced accuracy (mean recall over the classes the person shows)")
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .light_line_style(WHITE)
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, (_, v, _))| {
                // At or below chance for a balanced metric over two classes: red.
                let color = if *v <= 0.5 { RED.mix(0.7) } else { BLUE.mix(0.6) };
                Rectangle::new([(0.0, SegmentValue::Exact(at(i))), (v.max(0.004), SegmentValue::Exact(at(i) + 1))], color.filled())
            }))
            .map_err(e)?;
        chart
            .draw_series(
                rows.iter().enumerate().map(|(i, (_, v, k))| Text::new(format!("{v:.2} ({k})"), (v + 0.01, SegmentValue::CenterOf(at(i))), ("sans-serif", 11))),
            )
            .map_err(e)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    /// Readable cells up to 90 classes; beyond, the picture stays near 3600 px a side.
    #[test]
    fn a_confusion_matrix_of_many_classes_stays_a_few_thousand_pixels_wide() {
        use super::confusion_cell;
        assert_eq!([confusion_cell(2), confusion_cell(7), confusion_cell(9), confusion_cell(90)], [120, 51, 40, 40]);
        for c in [91, 120, 1000, 3600, 100_000] {
            let side = confusion_cell(c) as usize * c;
            assert!(confusion_cell(c) >= 1 && side <= 3600.max(c), "{c} classes: {side} px");
        }
        assert_eq!(confusion_cell(1000), 3);
    }

    /// A sweep that ended at an infinite rate (and loss) is drawn up to its
    /// last finite rate: a log axis to infinity never ended its ticks.
    #[test]
    fn an_lr_curve_ending_at_an_infinite_rate_is_drawn() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lr.png");
        let mut pts: Vec<(f64, f64, f64)> = (0..20).map(|i| (1e-6 * 2f64.powi(i), 2.0 - 0.05 * i as f64, 2.0 - 0.05 * i as f64)).collect();
        pts.push((f64::INFINITY, f64::NAN, f64::INFINITY));
        super::lr_curve(&p, &pts, 1e-4).unwrap();
        assert!(image::open(&p).unwrap().width() > 100);
    }
}

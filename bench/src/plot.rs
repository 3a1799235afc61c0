//! Bar charts for the reports, as SVG files beside the Markdown (plotters' SVG backend: no
//! fonts needed, the text stays text).
use std::path::Path;

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use serde::Serialize;

/// Bars per category, one bar per series (grouped), with the value written above each bar.
#[derive(Serialize, Clone)]
pub struct Plot {
    pub title: String,
    pub y_label: String,
    pub categories: Vec<String>,
    /// (name, one value per category); NaN: no bar.
    pub series: Vec<(String, Vec<f64>)>,
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Plot {
    pub fn render(&self, path: &Path) -> anyhow::Result<()> {
        let n = self.categories.len().max(1);
        let k = self.series.len().max(1);
        let max = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let y_max = if max > 0.0 { max * 1.18 } else { 1.0 };
        // Wide enough for the bars and for the longest category name under each group.
        let longest = self.categories.iter().map(|c| c.len()).max().unwrap_or(0);
        let per_group = (110 * k.min(4)).max(longest * 7 + 12);
        let width = (160 + per_group * n).clamp(480, 2000) as u32;
        let root = SVGBackend::new(path, (width, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(72)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..y_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let cats = self.categories.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&move |x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    cats.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(self.y_label.as_str())
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let group = 0.8;
        let bar = group / k as f64;
        for (j, (name, values)) in self.series.iter().enumerate() {
            let color = Palette99::pick(j).to_rgba();
            let x0 = |i: usize| i as f64 - group / 2.0 + j as f64 * bar;
            let bars = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, v)| {
                    Rectangle::new(
                        [(x0(i) + bar * 0.06, 0.0), (x0(i) + bar * 0.94, *v)],
                        color.filled(),
                    )
                });
            let drawn = chart
                .draw_series(bars)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if self.series.len() > 1 {
                drawn.label(name.as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            }
            let labels = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, v)| {
                    Text::new(
                        fmt_value(*v),
                        (x0(i) + bar / 2.0, *v + y_max * 0.01),
                        TextStyle::from(("sans-serif", 11).into_font())
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                });
            chart
                .draw_series(labels)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if self.series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grouped_chart_names_every_category_and_value() {
        let dir = std::env::temp_dir().join(format!("hapd-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = Plot {
            title: "outage".into(),
            y_label: "ms".into(),
            categories: vec![
                "host crash".into(),
                "kill -9".into(),
                "graceful stop".into(),
            ],
            series: vec![
                ("hapd".into(), vec![32.0, 0.0, 0.0]),
                ("keepalived".into(), vec![37.0, 0.0, f64::NAN]),
            ],
        };
        let path = dir.join("p.svg");
        p.render(&path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        for text in [
            "host crash",
            "kill -9",
            "graceful stop",
            "hapd",
            "keepalived",
            "32.0",
            "37.0",
        ] {
            assert!(svg.contains(&format!("\n{text}\n")), "{text} missing");
        }
        // Bars in each series' colour, plus its legend swatch: three for hapd, two for
        // keepalived (its NaN is left out).
        for (j, bars) in [(0, 3), (1, 2)] {
            let (r, g, b) = Palette99::pick(j).rgb();
            let fill = format!("fill=\"#{r:02X}{g:02X}{b:02X}\"");
            assert_eq!(svg.matches(&fill).count(), bars + 1, "series {j}: {svg}");
        }
    }
}

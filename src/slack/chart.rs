//! A chart of a query result, as a PNG to upload with the answer.
//!
//! Drawn when a result has one category or date column, one to three numeric columns and
//! 2–100 rows: bars for categories, a line for dates. Anything else (text columns only,
//! NaN or non-numeric values, more rows) gets no chart. Labels come from the column
//! names. Drawn in memory with plotters' bitmap backend and an embedded font (DejaVu
//! Sans, `assets/fonts/`): no browser, no system or network fonts.

use std::sync::Once;

use plotters::prelude::*;

use crate::agent::Table;
use crate::slack::api::FileUpload;

/// Rows a chart shows at most (and at least).
const ROWS: std::ops::RangeInclusive<usize> = 2..=100;
/// Numeric columns a chart shows at most.
const SERIES: usize = 3;
const WIDTH: u32 = 960;
const HEIGHT: u32 = 540;
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const COLOURS: [RGBColor; SERIES] = [
    RGBColor(0x1b, 0x31, 0x39),
    RGBColor(0xff, 0x36, 0x21),
    RGBColor(0x00, 0xa9, 0x72),
];

/// How the category column is drawn along the x axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Categories: grouped bars.
    Bars,
    /// Dates: a line per series.
    Line,
}

/// What a result would be drawn as, before drawing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub kind: Kind,
    /// The category or date column's name and its labels, row by row.
    pub x_name: String,
    pub labels: Vec<String>,
    /// Each numeric column's name and values, row by row (a missing value is `None`).
    pub series: Vec<(String, Vec<Option<f64>>)>,
}

/// The chart `table` calls for, if any.
pub fn plan(table: &Table) -> Option<Plan> {
    // A chart needs every row, and a table keeps only its first rows parsed.
    let every_row = table.fetched_rows == table.rows.len() as u64;
    if !every_row || !ROWS.contains(&table.rows.len()) || table.truncated {
        return None;
    }
    let column = |i: usize| table.rows.iter().map(move |row| row.get(i).cloned().flatten());
    let numeric = |i: usize| -> Option<Vec<Option<f64>>> {
        let values: Vec<Option<f64>> = column(i)
            .map(|cell| match cell {
                None => Some(None),
                Some(text) => text.trim().parse::<f64>().ok().filter(|v| v.is_finite()).map(Some),
            })
            .collect::<Option<_>>()?;
        values.iter().any(Option::is_some).then_some(values)
    };
    let mut x = None;
    let mut series = Vec::new();
    for (i, name) in table.columns.iter().enumerate() {
        match numeric(i) {
            Some(values) => series.push((name.clone(), values)),
            None if x.is_none() => x = Some(i),
            None => return None, // a second text column: nothing obvious to draw
        }
    }
    let x = x?;
    if series.is_empty() || series.len() > SERIES {
        return None;
    }
    let labels: Vec<String> = column(x).map(Option::unwrap_or_default).collect();
    let kind = if labels.iter().all(|l| is_date(l)) {
        Kind::Line
    } else {
        Kind::Bars
    };
    Some(Plan {
        kind,
        x_name: table.columns[x].clone(),
        labels,
        series,
    })
}

/// `2025-03-01` or a timestamp starting so.
fn is_date(text: &str) -> bool {
    let date = text.get(..10).unwrap_or_default();
    jiff::civil::Date::strptime("%Y-%m-%d", date).is_ok()
}

impl Plan {
    /// Words describing the chart, for its alt text and title.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.series.iter().map(|(n, _)| n.as_str()).collect();
        let shape = match self.kind {
            Kind::Bars => "Bar chart",
            Kind::Line => "Line chart",
        };
        format!(
            "{shape} of {} by {}, {} rows",
            names.join(", "),
            self.x_name,
            self.labels.len()
        )
    }

    /// Draws the chart as a PNG.
    pub fn draw(&self) -> Result<Vec<u8>, String> {
        register_font();
        let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
        self.draw_on(&mut pixels).map_err(|e| e.to_string())?;
        let mut png = Vec::new();
        let mut encoder = png::Encoder::new(&mut png, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .write_header()
            .and_then(|mut writer| writer.write_image_data(&pixels))
            .map_err(|e| e.to_string())?;
        Ok(png)
    }

    fn draw_on(&self, pixels: &mut [u8]) -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let values = self.series.iter().flat_map(|(_, v)| v.iter().flatten().copied());
        let (low, high) = values.fold((0f64, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let pad = ((high - low) * 0.05).max(1e-9);
        let (low, high) = (if low < 0.0 { low - pad } else { 0.0 }, high + pad);
        let n = self.labels.len();
        let names: Vec<&str> = self.series.iter().map(|(n, _)| n.as_str()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{} by {}", names.join(", "), self.x_name), ("sans-serif", 26))
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(80)
            // Category i is centred on x = i, where the axis puts its ticks.
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, low..high)?;
        let labels = &self.labels;
        let label_at = |x: &f64| {
            let i = x.round();
            match labels.get(i as usize) {
                Some(label) if i >= 0.0 && (x - i).abs() < 1e-6 => label.chars().take(16).collect(),
                _ => String::new(),
            }
        };
        chart
            .configure_mesh()
            .x_labels(n.min(12))
            .x_label_formatter(&label_at)
            .x_desc(self.x_name.as_str())
            .y_desc(if names.len() == 1 { names[0] } else { "" })
            .disable_x_mesh()
            .label_style(("sans-serif", 15))
            .draw()?;
        let width = 0.8 / self.series.len() as f64;
        for (s, (name, values)) in self.series.iter().enumerate() {
            let colour = COLOURS[s];
            let points = values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (i as f64, v)));
            let drawn = match self.kind {
                Kind::Bars => chart.draw_series(points.map(|(x, v)| {
                    let left = x - 0.4 + width * s as f64;
                    Rectangle::new([(left, 0f64.max(low)), (left + width, v)], colour.filled())
                }))?,
                Kind::Line => chart.draw_series(LineSeries::new(points, colour.stroke_width(3)))?,
            };
            drawn
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
        }
        if self.series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .draw()?;
        }
        root.present()?;
        Ok(())
    }
}

/// The embedded font, registered with plotters once.
fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            tracing::error!("the embedded chart font cannot be read");
        }
    });
}

/// The chart of `table` as a file to upload with the answer, if it calls for one.
pub fn chart(table: &Table) -> Option<FileUpload> {
    let plan = plan(table)?;
    match plan.draw() {
        Ok(png) => Some(FileUpload::binary(
            "chart.png",
            &plan.describe(),
            "image/png",
            png,
            Some(plan.describe()),
        )),
        Err(error) => {
            tracing::warn!(error, "could not draw a chart");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(columns: &[&str], rows: Vec<Vec<&str>>) -> Table {
        Table::of(
            columns.iter().map(|c| (*c).to_owned()).collect(),
            rows.into_iter()
                .map(|r| r.into_iter().map(|c| (c != "NULL").then(|| c.to_owned())).collect())
                .collect(),
        )
    }

    #[test]
    fn categories_become_bars_and_dates_a_line_labelled_from_the_column_names() {
        let bars = plan(&table(
            &["region", "revenue"],
            vec![vec!["EMEA", "10.5"], vec!["AMER", "-3"]],
        ))
        .unwrap();
        assert_eq!(bars.kind, Kind::Bars);
        assert_eq!(bars.x_name, "region");
        assert_eq!(bars.labels, ["EMEA", "AMER"]);
        assert_eq!(bars.series, [("revenue".to_owned(), vec![Some(10.5), Some(-3.0)])]);
        assert_eq!(bars.describe(), "Bar chart of revenue by region, 2 rows");

        let line = plan(&table(
            &["day", "orders", "returns", "refunds"],
            vec![
                vec!["2025-03-01", "4", "1", "0"],
                vec!["2025-03-02T00:00:00Z", "5", "NULL", "1"],
            ],
        ))
        .unwrap();
        assert_eq!(line.kind, Kind::Line);
        assert_eq!(line.series.len(), 3);
        assert_eq!(line.series[1].1, [Some(1.0), None]);
    }

    #[test]
    fn results_without_an_obvious_chart_get_none() {
        let one_row = table(&["region", "revenue"], vec![vec!["EMEA", "1"]]);
        let text_only = table(&["a", "b"], vec![vec!["x", "y"], vec!["z", "w"]]);
        let two_text = table(&["a", "b", "n"], vec![vec!["x", "y", "1"], vec!["z", "w", "2"]]);
        let nan = table(&["region", "revenue"], vec![vec!["EMEA", "NaN"], vec!["AMER", "2"]]);
        let words = table(&["region", "revenue"], vec![vec!["EMEA", "lots"], vec!["AMER", "2"]]);
        let numbers_only = table(&["a", "b"], vec![vec!["1", "2"], vec!["3", "4"]]);
        let four_series = table(
            &["d", "a", "b", "c", "e"],
            vec![vec!["x", "1", "2", "3", "4"], vec!["y", "1", "2", "3", "4"]],
        );
        let all_null = table(&["region", "revenue"], vec![vec!["EMEA", "NULL"], vec!["AMER", "NULL"]]);
        for (name, t) in [
            ("one row", one_row),
            ("text only", text_only),
            ("two text columns", two_text),
            ("NaN", nan),
            ("non-numeric strings", words),
            ("no category", numbers_only),
            ("four series", four_series),
            ("nothing to draw", all_null),
        ] {
            assert_eq!(plan(&t), None, "{name}");
        }
        let rows = (0..10_000)
            .map(|i| vec![format!("r{i}"), i.to_string()])
            .collect::<Vec<_>>();
        let big = Table::of(
            vec!["region".into(), "n".into()],
            rows.into_iter().map(|r| r.into_iter().map(Some).collect()).collect(),
        );
        assert_eq!(plan(&big), None, "10,000 rows");
    }

    #[test]
    fn a_chart_is_a_png_of_the_documented_size_with_alt_text() {
        let t = table(
            &["region", "revenue", "cost"],
            vec![vec!["EMEA", "10.5"], vec!["AMER", "-3"], vec!["APAC", "7"]]
                .into_iter()
                .map(|mut r| {
                    r.push("2");
                    r
                })
                .collect(),
        );
        let file = chart(&t).expect("a chart");
        let png = file.bytes();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, right after the signature and chunk header.
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), WIDTH);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), HEIGHT);
        assert_eq!(
            file.alt.as_deref(),
            Some("Bar chart of revenue, cost by region, 3 rows")
        );
        assert_eq!(file.content_type, "image/png");
    }
}

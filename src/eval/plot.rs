//! An SVG figure of an evaluation report, hand-written: clean, PGD and certified accuracy
//! against weight sparsity, one line per pruning method.
//!
//! Layout: a title (dataset, ε, n), then three panels "clean", "PGD" and "certified" (accuracy
//! 0–100 % on y, weight sparsity 0–100 % on x). Every pruning method (fp32 rows with
//! compression ≠ `none`) is a polyline with markers sorted by sparsity, starting at the unpruned
//! fp32 point (a black ring) when the report has one. The quantized formats of the unpruned net
//! get a fourth, narrow panel "formats" with a categorical x axis (fp32, fp16, int8, ...) and a
//! marker per metric and format. Drawn at x = 0 of the sparsity panels they would sit on top of
//! the fp32 point and of each other (quantization often moves accuracy by less than a point)
//! with their labels colliding; side by side the formats compare at a glance. Rows both pruned
//! and quantized are not drawn. A legend below names the methods, coloured from a fixed palette
//! in order of first appearance (cycled, with a dash pattern, beyond ten methods).
//! Values are clamped into the plot (NaN to 0), coordinates written with at most 2 decimals.

use super::report::{Report, Row};
use std::fmt::Write as _;

const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
/// Dash pattern per trip through the palette, so methods 1 and 11 still differ.
const DASHES: [&str; 3] = ["", "6 3", "2 2"];
const METRICS: [&str; 3] = ["clean", "PGD", "certified"];
/// Marker shape per metric in the formats panel.
const METRIC_SHAPES: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Diamond];

const MARGIN: f64 = 10.0;
const PLOT_W: f64 = 240.0;
const PLOT_H: f64 = 200.0;
/// Room left of each plot for the y tick labels (and right of it before the next panel).
const PAD_L: f64 = 52.0;
const PAD_R: f64 = 14.0;
/// Title, subtitle and panel titles above the plots.
const TOP: f64 = 66.0;
/// x tick labels and axis label below the plots.
const BOTTOM: f64 = 42.0;
/// Width of one category in the formats panel.
const FORMAT_COL: f64 = 52.0;
const LEGEND_ROW: f64 = 18.0;

macro_rules! put {
    // Writing to a String cannot fail.
    ($s:expr, $($arg:tt)*) => {{
        let _ = writeln!($s, $($arg)*);
    }};
}

/// Clamp `t` into [0, 1]; NaN goes to 0.
fn unit(t: f64) -> f64 {
    if t.is_nan() {
        0.0
    } else {
        t.clamp(0.0, 1.0)
    }
}

/// At most 2 decimals, trailing zeros dropped (`12.5`, `3`, never `-0`).
fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Accuracy of `row` in % under metric `m` (index into `METRICS`).
fn metric(row: &Row, m: usize) -> f64 {
    100.0 * [row.clean, row.pgd, row.certified][m]
}

/// What the figure shows, picked out of the rows.
struct Data<'a> {
    /// The unpruned fp32 net, where every line starts.
    baseline: Option<&'a Row>,
    /// Pruning methods in order of first appearance, each with its fp32 rows by sparsity.
    methods: Vec<(&'a str, Vec<&'a Row>)>,
    /// The unpruned net once per format, fp32 first; empty unless some format is quantized.
    formats: Vec<&'a Row>,
}

impl<'a> Data<'a> {
    fn of(report: &'a Report) -> Data<'a> {
        // With a certifier cascade, every setting has one row per certifier: the figure shows
        // the strongest (each setting's last).
        let strongest = report.rows.last().map(|r| r.certifier.as_str());
        let shown: Vec<&Row> = report
            .rows
            .iter()
            .filter(|r| Some(r.certifier.as_str()) == strongest)
            .collect();
        let unpruned_fp32 = |r: &&&Row| r.compression == "none" && r.format == "fp32";
        let baseline = shown.iter().find(unpruned_fp32).copied();
        let mut methods: Vec<(&str, Vec<&Row>)> = Vec::new();
        let mut formats: Vec<&Row> = baseline.into_iter().collect();
        for r in shown {
            if r.compression == "none" {
                if !formats.iter().any(|f| f.format == r.format) {
                    formats.push(r);
                }
            } else if r.format == "fp32" {
                match methods.iter_mut().find(|(name, _)| *name == r.compression) {
                    Some((_, rows)) => rows.push(r),
                    None => methods.push((&r.compression, vec![r])),
                }
            }
        }
        for (_, rows) in &mut methods {
            rows.sort_by(|a, b| unit(a.sparsity).total_cmp(&unit(b.sparsity)));
        }
        if formats.iter().all(|f| f.format == "fp32") {
            formats.clear();
        }
        Data {
            baseline,
            methods,
            formats,
        }
    }
}

/// A plot area in pixels: data x in [0, `x_max`], y in [0, 100] %, clamped into it.
struct Axes {
    left: f64,
    top: f64,
    width: f64,
    x_max: f64,
}

impl Axes {
    fn px(&self, x: f64) -> f64 {
        self.left + self.width * unit(x / self.x_max)
    }

    fn py(&self, y: f64) -> f64 {
        self.top + PLOT_H * (1.0 - unit(y / 100.0))
    }
}

#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Square,
    Diamond,
}

fn text(s: &mut String, x: f64, y: f64, anchor: &str, extra: &str, body: &str) {
    put!(
        s,
        r#"<text x="{}" y="{}" text-anchor="{anchor}"{extra}>{}</text>"#,
        num(x),
        num(y),
        escape(body)
    );
}

/// Gridlines, ticks with labels, frame, panel title and x axis label.
fn frame(s: &mut String, ax: &Axes, title: &str, x_ticks: &[(f64, String)], x_label: &str) {
    let (left, right) = (ax.left, ax.left + ax.width);
    let (top, bottom) = (ax.top, ax.top + PLOT_H);
    put!(s, r##"<g class="axes" stroke="#ddd">"##);
    for y in (0..=100).step_by(20).map(f64::from) {
        let py = num(ax.py(y));
        put!(
            s,
            r#"<line x1="{}" y1="{py}" x2="{}" y2="{py}"/>"#,
            num(left),
            num(right)
        );
    }
    for (x, _) in x_ticks {
        let px = num(ax.px(*x));
        put!(
            s,
            r#"<line x1="{px}" y1="{}" x2="{px}" y2="{}"/>"#,
            num(top),
            num(bottom)
        );
    }
    put!(
        s,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        num(left),
        num(top),
        num(ax.width),
        num(PLOT_H)
    );
    put!(s, "</g>");
    for y in (0..=100).step_by(20) {
        text(
            s,
            left - 5.0,
            ax.py(f64::from(y)) + 4.0,
            "end",
            "",
            &y.to_string(),
        );
    }
    for (x, label) in x_ticks {
        text(s, ax.px(*x), bottom + 15.0, "middle", "", label);
    }
    let bold = r#" font-weight="bold""#;
    text(s, (left + right) / 2.0, top - 8.0, "middle", bold, title);
    text(
        s,
        (left + right) / 2.0,
        bottom + 32.0,
        "middle",
        "",
        x_label,
    );
    let (yx, yy) = (num(left - 38.0), num((top + bottom) / 2.0));
    let rotate = format!(r#" transform="rotate(-90 {yx} {yy})""#);
    text(
        s,
        left - 38.0,
        (top + bottom) / 2.0,
        "middle",
        &rotate,
        "accuracy (%)",
    );
}

/// A marker with a tooltip.
fn marker(s: &mut String, shape: Shape, x: f64, y: f64, fill: &str, stroke: &str, tip: &str) {
    let (x, y, tip) = (num(x), num(y), escape(tip));
    let paint = format!(r#"fill="{fill}" stroke="{stroke}""#);
    match shape {
        Shape::Circle => put!(
            s,
            r#"<circle cx="{x}" cy="{y}" r="3.5" {paint}><title>{tip}</title></circle>"#
        ),
        Shape::Square => put!(
            s,
            r#"<rect x="{x}" y="{y}" width="7" height="7" transform="translate(-3.5 -3.5)" {paint}><title>{tip}</title></rect>"#
        ),
        Shape::Diamond => put!(
            s,
            r#"<polygon points="0,-4.5 4.5,0 0,4.5 -4.5,0" transform="translate({x} {y})" {paint}><title>{tip}</title></polygon>"#
        ),
    }
}

fn tip(r: &Row, m: usize) -> String {
    format!(
        "{} δ={} {}: sparsity {}%, {} {}%",
        r.compression,
        num(r.ratio),
        r.format,
        num(100.0 * r.sparsity),
        METRICS[m],
        num(metric(r, m))
    )
}

/// Colour and dash attribute of the `i`-th method.
fn style(i: usize) -> (&'static str, String) {
    let dash = match DASHES[(i / PALETTE.len()) % DASHES.len()] {
        "" => String::new(),
        d => format!(r#" stroke-dasharray="{d}""#),
    };
    (PALETTE[i % PALETTE.len()], dash)
}

/// One method in one panel: a polyline from the baseline through its rows, markers on its rows.
fn method_line(s: &mut String, ax: &Axes, m: usize, rows: &[&Row], base: Option<&Row>, i: usize) {
    let (colour, dash) = style(i);
    let points: Vec<String> = base
        .into_iter()
        .chain(rows.iter().copied())
        .map(|r| {
            format!(
                "{},{}",
                num(ax.px(100.0 * r.sparsity)),
                num(ax.py(metric(r, m)))
            )
        })
        .collect();
    put!(s, r#"<g class="method">"#);
    put!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>"#,
        points.join(" ")
    );
    for r in rows {
        let (x, y) = (ax.px(100.0 * r.sparsity), ax.py(metric(r, m)));
        marker(s, Shape::Circle, x, y, colour, colour, &tip(r, m));
    }
    put!(s, "</g>");
}

/// One of the clean / PGD / certified panels.
fn sparsity_panel(s: &mut String, ax: &Axes, m: usize, data: &Data, note: Option<&str>) {
    put!(s, r#"<g class="panel">"#);
    let ticks: Vec<(f64, String)> = (0..=100)
        .step_by(20)
        .map(|x| (f64::from(x), x.to_string()))
        .collect();
    frame(s, ax, METRICS[m], &ticks, "weight sparsity (%)");
    for (i, (_, rows)) in data.methods.iter().enumerate() {
        method_line(s, ax, m, rows, data.baseline, i);
    }
    if let Some(b) = data.baseline {
        let (x, y) = (ax.px(100.0 * b.sparsity), ax.py(metric(b, m)));
        marker(s, Shape::Circle, x, y, "#fff", "#000", &tip(b, m));
    }
    if let Some(note) = note {
        let (x, y) = (ax.left + ax.width / 2.0, ax.top + PLOT_H / 2.0);
        text(s, x, y, "middle", r##" fill="#888""##, note);
    }
    put!(s, "</g>");
}

/// The unpruned net per weight format, one marker per metric, metrics side by side.
fn formats_panel(s: &mut String, ax: &Axes, formats: &[&Row]) {
    put!(s, r#"<g class="panel">"#);
    let ticks: Vec<(f64, String)> = formats
        .iter()
        .enumerate()
        .map(|(i, r)| (i as f64 + 0.5, r.format.clone()))
        .collect();
    frame(s, ax, "formats (unpruned)", &ticks, "weight format");
    for (i, r) in formats.iter().enumerate() {
        for (m, shape) in METRIC_SHAPES.into_iter().enumerate() {
            let x = ax.px(i as f64 + 0.5) + 12.0 * (m as f64 - 1.0);
            marker(s, shape, x, ax.py(metric(r, m)), "#444", "#444", &tip(r, m));
        }
    }
    put!(s, "</g>");
}

/// What a legend entry shows left of its label.
enum Key {
    /// Index into the palette and dash cycle.
    Method(usize),
    Marker(Shape, &'static str, &'static str),
}

/// Legend entries in a grid of `cols` columns below the panels, starting at `top`.
fn legend(s: &mut String, top: f64, cols: usize, col_w: f64, entries: &[(Key, String)]) {
    put!(s, r#"<g class="legend">"#);
    for (k, (key, label)) in entries.iter().enumerate() {
        let x = MARGIN + PAD_L + col_w * (k % cols) as f64;
        let y = top + LEGEND_ROW * (k / cols) as f64;
        match key {
            Key::Method(i) => {
                let (colour, dash) = style(*i);
                put!(
                    s,
                    r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="1.5"{dash}/>"#,
                    num(x),
                    num(y),
                    num(x + 22.0),
                    num(y)
                );
                marker(s, Shape::Circle, x + 11.0, y, colour, colour, label);
            }
            Key::Marker(shape, fill, stroke) => marker(s, *shape, x + 11.0, y, fill, stroke, label),
        }
        text(s, x + 28.0, y + 4.0, "start", "", label);
    }
    put!(s, "</g>");
}

/// The report as an SVG document: clean, PGD and certified accuracy (%) against weight sparsity
/// (%), one line per pruning method, plus a panel for the quantized formats of the unpruned net
/// when the report has any (see the module documentation for the layout).
pub fn accuracy_svg(report: &Report) -> String {
    let data = Data::of(report);
    let panel_w = PAD_L + PLOT_W + PAD_R;
    let formats_plot_w = FORMAT_COL * data.formats.len().max(2) as f64;
    let formats_w = if data.formats.is_empty() {
        0.0
    } else {
        PAD_L + formats_plot_w + PAD_R
    };
    let width = 2.0 * MARGIN + 3.0 * panel_w + formats_w;

    let mut entries: Vec<(Key, String)> = data
        .methods
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (Key::Method(i), name.to_string()))
        .collect();
    if data.baseline.is_some() {
        entries.push((
            Key::Marker(Shape::Circle, "#fff", "#000"),
            "unpruned fp32".into(),
        ));
    }
    if !data.formats.is_empty() {
        for (m, shape) in METRIC_SHAPES.into_iter().enumerate() {
            entries.push((
                Key::Marker(shape, "#444", "#444"),
                format!("formats: {}", METRICS[m]),
            ));
        }
    }
    let longest = entries
        .iter()
        .map(|(_, l)| l.chars().count())
        .max()
        .unwrap_or(0);
    let col_w = 40.0 + 6.5 * longest as f64;
    let cols = (((width - 2.0 * MARGIN - PAD_L) / col_w).floor() as usize).max(1);
    let legend_rows = entries.len().div_ceil(cols);
    let legend_top = TOP + PLOT_H + BOTTOM + 14.0;
    let height = legend_top + LEGEND_ROW * legend_rows as f64 + MARGIN;

    let mut s = String::new();
    put!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#,
        w = num(width),
        h = num(height)
    );
    put!(s, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    // Image-space radii are usually k/255: say so next to the decimal.
    let k = f64::from(report.eps) * 255.0;
    let over_255 = if k >= 0.5 && (k - k.round()).abs() < 1e-3 {
        format!(" = {}/255", k.round())
    } else {
        String::new()
    };
    let title = format!(
        "{}: ε = {}{over_255}, n = {}",
        report.dataset, report.eps, report.n
    );
    text(
        &mut s,
        width / 2.0,
        20.0,
        "middle",
        r#" font-size="15" font-weight="bold""#,
        &title,
    );
    let subtitle = format!("checkpoint {}", report.checkpoint);
    text(
        &mut s,
        width / 2.0,
        36.0,
        "middle",
        r##" fill="#555""##,
        &subtitle,
    );

    let note = match (
        report.rows.is_empty(),
        data.methods.is_empty() && data.baseline.is_none(),
    ) {
        (true, _) => Some("no rows"),
        (false, true) => Some("no fp32 rows"),
        _ => None,
    };
    for m in 0..METRICS.len() {
        let left = MARGIN + PAD_L + panel_w * m as f64;
        let ax = Axes {
            left,
            top: TOP,
            width: PLOT_W,
            x_max: 100.0,
        };
        sparsity_panel(&mut s, &ax, m, &data, note);
    }
    if !data.formats.is_empty() {
        let left = MARGIN + PAD_L + 3.0 * panel_w;
        // A lone format sits in the middle of an axis two columns wide.
        let x_max = data.formats.len() as f64;
        let ax = Axes {
            left,
            top: TOP,
            width: formats_plot_w,
            x_max,
        };
        formats_panel(&mut s, &ax, &data.formats);
    }
    legend(&mut s, legend_top, cols, col_w, &entries);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(compression: &str, sparsity: f64, format: &str, acc: f64) -> Row {
        Row {
            compression: compression.into(),
            ratio: sparsity,
            sparsity,
            format: format.into(),
            certifier: "ibp".into(),
            clean: acc,
            pgd: acc - 0.1,
            certified: acc - 0.2,
            seconds: 0.0,
        }
    }

    fn report(rows: Vec<Row>) -> Report {
        Report {
            checkpoint: "runs/a.safetensors".into(),
            dataset: "cifar10".into(),
            eps: 0.03,
            n: 1000,
            bn_recalibration_batches: None,
            shard: None,
            sound: false,
            rows,
        }
    }

    fn full() -> Report {
        report(vec![
            row("none", 0.0, "fp32", 0.8),
            row("none", 0.0, "fp16", 0.79),
            row("none", 0.0, "int8", 0.78),
            row("gul1", 0.9, "fp32", 0.5),
            row("gul1", 0.5, "fp32", 0.7),
            row("lul1", 0.5, "fp32", 0.72),
            row("lul1", 0.5, "int8", 0.7),
        ])
    }

    /// Well-formed enough: one root, balanced groups and texts.
    fn check_shape(svg: &str) {
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(
            svg.matches("<g ").count() + svg.matches("<g>").count(),
            svg.matches("</g>").count()
        );
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        // Tooltips report values as given; coordinates are always finite.
        let drawn: String = svg
            .split("<title>")
            .map(|part| part.split_once("</title>").map_or(part, |(_, rest)| rest))
            .collect();
        assert!(!drawn.contains("NaN") && !drawn.contains("inf"), "{svg}");
    }

    #[test]
    fn one_polyline_per_method_and_panel_with_legend() {
        let svg = accuracy_svg(&full());
        check_shape(&svg);
        assert_eq!(svg.matches("<polyline").count(), 2 * 3);
        for label in [
            "clean",
            "PGD",
            "certified",
            "formats (unpruned)",
            ">gul1<",
            ">lul1<",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        assert!(svg.contains("cifar10: ε = 0.03, n = 1000"));
        // Lines start at the unpruned point (sparsity 0) and run by sparsity.
        let ax = Axes {
            left: MARGIN + PAD_L,
            top: TOP,
            width: PLOT_W,
            x_max: 100.0,
        };
        let gul1 = format!(
            r#"<polyline points="{},{} {},{} {},{}""#,
            num(ax.px(0.0)),
            num(ax.py(80.0)),
            num(ax.px(50.0)),
            num(ax.py(70.0)),
            num(ax.px(90.0)),
            num(ax.py(50.0))
        );
        assert!(svg.contains(&gul1), "{gul1}\n{svg}");
        // Format categories, and no line for pruned + quantized rows.
        assert!(svg.contains(">fp16<") && svg.contains(">int8<"));
        assert_eq!(
            svg.matches("<polygon").count(),
            3 + 1,
            "a diamond per format, one in the legend"
        );
    }

    #[test]
    fn escapes_text() {
        let mut r = full();
        r.rows.push(row("a<&>\"b", 0.3, "fp32", 0.6));
        r.dataset = "x&y".into();
        r.eps = 8.0 / 255.0;
        let svg = accuracy_svg(&r);
        check_shape(&svg);
        assert!(svg.contains(">a&lt;&amp;&gt;&quot;b</text>"));
        assert!(
            svg.contains("x&amp;y: ε = 0.03137255 = 8/255, n = 1000"),
            "{svg}"
        );
        assert!(!svg.contains("a<&>"));
        assert_eq!(svg.matches("<polyline").count(), 3 * 3);
    }

    #[test]
    fn empty_and_degenerate_reports() {
        let svg = accuracy_svg(&report(vec![]));
        check_shape(&svg);
        assert_eq!(svg.matches(">no rows</text>").count(), 3);
        assert_eq!(svg.matches("<polyline").count(), 0);
        assert_eq!(
            svg.matches("<rect").count(),
            1 + 3,
            "background and three frames"
        );

        let svg = accuracy_svg(&report(vec![row("none", 0.0, "fp32", 0.8)]));
        check_shape(&svg);
        assert!(!svg.contains("no rows") && !svg.contains("formats"));

        let svg = accuracy_svg(&report(vec![row("none", 0.0, "int4", 0.8)]));
        check_shape(&svg);
        assert!(svg.contains(">no fp32 rows<") && svg.contains(">int4<"));

        // One point per method, NaN and out-of-range values, no baseline.
        let mut odd = row("gsl2", f64::NAN, "fp32", f64::NAN);
        odd.pgd = 7.0;
        odd.certified = f64::NEG_INFINITY;
        let svg = accuracy_svg(&report(vec![odd, row("lul1", 1.5, "fp32", -1.0)]));
        check_shape(&svg);
        assert_eq!(svg.matches("<polyline").count(), 2 * 3);
    }

    #[test]
    fn many_methods_cycle_the_palette() {
        let rows = (0..23)
            .map(|i| row(&format!("m{i}"), 0.5, "fp32", 0.5))
            .collect();
        let svg = accuracy_svg(&report(rows));
        check_shape(&svg);
        assert_eq!(svg.matches("<polyline").count(), 23 * 3);
        assert!(
            svg.contains(r#"stroke-dasharray="6 3""#) && svg.contains(r#"stroke-dasharray="2 2""#)
        );
        assert!((0..23).all(|i| svg.contains(&format!(">m{i}</text>"))));
    }

    #[test]
    fn deterministic_and_compact_numbers() {
        assert_eq!(accuracy_svg(&full()), accuracy_svg(&full()));
        assert_eq!(num(12.345), "12.35");
        assert_eq!(num(3.0), "3");
        assert_eq!(num(2.50), "2.5");
        assert_eq!(num(-0.001), "0");
        assert_eq!(
            escape(r#"<a & 'b' "c">"#),
            "&lt;a &amp; &apos;b&apos; &quot;c&quot;&gt;"
        );
    }
}

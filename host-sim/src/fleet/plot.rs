//! The PNG: TTFT (p99 solid, p50 dashed) against QPS per policy, one panel per workload, log
//! scale in seconds. Drawn on an RGB canvas here and encoded with the `png` crate.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

use super::font::glyph;
use super::report::Summary;

type Rgb = [u8; 3];

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x < 0 || y < 0 || x as usize >= self.w || y as usize >= self.h {
            return;
        }
        let i = (y as usize * self.w + x as usize) * 3;
        if let Some(p) = self.px.get_mut(i..i + 3) {
            p.copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0..=y1 {
            for x in x0..=x1 {
                self.set(x, y, c);
            }
        }
    }

    /// A line `thick` pixels wide; `dash` > 0 draws `dash` pixels on, `dash` off.
    fn line(
        &mut self,
        (x0, y0): (f64, f64),
        (x1, y1): (f64, f64),
        c: Rgb,
        thick: i64,
        dash: usize,
    ) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            if dash > 0 && (i / dash) % 2 == 1 {
                continue;
            }
            let t = i as f64 / n as f64;
            let (x, y) = (
                (x0 + (x1 - x0) * t).round() as i64,
                (y0 + (y1 - y0) * t).round() as i64,
            );
            for dy in 0..thick {
                for dx in 0..thick {
                    self.set(x + dx - thick / 2, y + dy - thick / 2, c);
                }
            }
        }
    }

    /// Text at (x, y) = top left, each font pixel `scale` pixels wide.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let ox = x + k as i64 * 6 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0b10000 >> col) != 0 {
                        let (px, py) = (ox + col * scale, y + row as i64 * scale);
                        self.rect(px, py, px + scale - 1, py + scale - 1, c);
                    }
                }
            }
        }
    }

    fn text_width(s: &str, scale: i64) -> i64 {
        s.chars().count() as i64 * 6 * scale
    }
}

fn color(policy: &str, k: usize) -> Rgb {
    match policy {
        "round-robin" => [214, 39, 40],
        "least-queue" => [31, 119, 180],
        "llm-router" => [44, 160, 44],
        "llm-router+affinity" => [148, 0, 211],
        "sticky" => [255, 127, 14],
        _ => [[120, 120, 120], [140, 86, 75], [23, 190, 207]][k % 3],
    }
}

const GRID: Rgb = [225, 225, 225];
const AXIS: Rgb = [60, 60, 60];
const PANEL_W: usize = 560;
const PANEL_H: usize = 460;

fn label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v}");
        s.trim_start_matches('0').to_string()
    }
}

/// Renders the plot as PNG bytes. Workloads in the order of first appearance.
pub fn render(rows: &[Summary]) -> Result<Vec<u8>> {
    let mut workloads: Vec<&str> = Vec::new();
    let mut policies: Vec<&str> = Vec::new();
    for r in rows {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    let legend_h = 30 + 22 * policies.len().div_ceil(2);
    let (w, h) = (PANEL_W * workloads.len().max(1), PANEL_H + legend_h);
    let mut c = Canvas::new(w, h);
    // One y scale for every panel: decades around the data.
    let ys: Vec<f64> = rows
        .iter()
        .flat_map(|r| [r.ttft_p50_s, r.ttft_p99_s])
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = ys.iter().copied().fold(f64::INFINITY, f64::min).max(1e-3);
    let hi = ys.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    for (k, wname) in workloads.iter().enumerate() {
        let ox = (k * PANEL_W) as i64;
        let (l, r, t, b) = (
            ox + 70,
            ox + PANEL_W as i64 - 35,
            50i64,
            PANEL_H as i64 - 60,
        );
        let mine: Vec<&Summary> = rows.iter().filter(|x| x.workload == *wname).collect();
        let qmin = mine.iter().map(|x| x.qps).fold(f64::INFINITY, f64::min);
        let qmax = mine.iter().map(|x| x.qps).fold(0.0, f64::max);
        let span = if qmax > qmin { qmax - qmin } else { 1.0 };
        let px = |q: f64| l as f64 + (q - qmin) / span * (r - l) as f64;
        let py = |v: f64| {
            let f = (v.max(10f64.powi(d0)).log10() - f64::from(d0)) / f64::from(d1 - d0);
            b as f64 - f * (b - t) as f64
        };
        let title = format!("{wname}: TTFT (S) VS QPS");
        c.text(
            ox + (PANEL_W as i64 - Canvas::text_width(&title, 2)) / 2,
            15,
            &title,
            2,
            AXIS,
        );
        for d in d0..=d1 {
            let v = 10f64.powi(d);
            let y = py(v).round() as i64;
            c.line((l as f64, y as f64), (r as f64, y as f64), GRID, 1, 0);
            let s = label(v);
            c.text(l - 8 - Canvas::text_width(&s, 2), y - 7, &s, 2, AXIS);
        }
        let mut qs: Vec<f64> = mine.iter().map(|x| x.qps).collect();
        qs.sort_by(f64::total_cmp);
        qs.dedup();
        for q in &qs {
            let x = px(*q).round() as i64;
            c.line((x as f64, t as f64), (x as f64, b as f64), GRID, 1, 0);
            let s = label(*q);
            c.text(x - Canvas::text_width(&s, 2) / 2, b + 10, &s, 2, AXIS);
        }
        c.text(
            (l + r) / 2 - Canvas::text_width("QPS", 2) / 2,
            b + 32,
            "QPS",
            2,
            AXIS,
        );
        c.line((l as f64, t as f64), (l as f64, b as f64), AXIS, 2, 0);
        c.line((l as f64, b as f64), (r as f64, b as f64), AXIS, 2, 0);
        // A 2 s reference line (the goal's knee).
        if (f64::from(d0)..=f64::from(d1)).contains(&2f64.log10()) {
            let y = py(2.0);
            c.line((l as f64, y), (r as f64, y), [200, 200, 200], 1, 6);
        }
        for (pk, p) in policies.iter().enumerate() {
            let mut pts: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
            for x in mine
                .iter()
                .filter(|x| x.policy == *p && x.unavailable.is_none())
            {
                pts.insert((x.qps * 1000.0) as i64, (x.ttft_p50_s, x.ttft_p99_s));
            }
            let col = color(p, pk);
            let line: Vec<(f64, f64, f64)> = pts
                .iter()
                .map(|(q, (a, b))| (px(*q as f64 / 1000.0), py(*a), py(*b)))
                .collect();
            for pair in line.windows(2) {
                c.line((pair[0].0, pair[0].2), (pair[1].0, pair[1].2), col, 3, 0);
                c.line((pair[0].0, pair[0].1), (pair[1].0, pair[1].1), col, 2, 7);
            }
            for (x, p50, p99) in &line {
                c.rect(
                    *x as i64 - 3,
                    *p99 as i64 - 3,
                    *x as i64 + 3,
                    *p99 as i64 + 3,
                    col,
                );
                c.rect(
                    *x as i64 - 2,
                    *p50 as i64 - 2,
                    *x as i64 + 2,
                    *p50 as i64 + 2,
                    col,
                );
            }
        }
    }
    // Legend.
    let ly = PANEL_H as i64 + 5;
    c.text(
        20,
        ly,
        "SOLID: P99 TTFT   DASHED: P50 TTFT   GREY DASHES: 2 S",
        2,
        AXIS,
    );
    for (pk, p) in policies.iter().enumerate() {
        let (col_x, row) = (20 + (pk % 2) as i64 * 420, (pk / 2) as i64);
        let y = ly + 28 + row * 22;
        let col = color(p, pk);
        c.line(
            (col_x as f64, (y + 6) as f64),
            ((col_x + 40) as f64, (y + 6) as f64),
            col,
            3,
            0,
        );
        c.text(col_x + 50, y, p, 2, col);
    }
    encode(&c)
}

fn encode(c: &Canvas) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, c.w as u32, c.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().context("PNG header")?;
        wr.write_image_data(&c.px).context("PNG data")?;
    }
    Ok(out)
}

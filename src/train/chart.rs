//! Small PNG charts for training curves and evaluation scores, drawn with the `image` crate and
//! a built-in 5×7 pixel font (upper-case letters, digits and a little punctuation), so no plotting
//! toolkit is needed on a fresh machine.

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};

/// Rows of a 5-pixel-wide glyph, most significant of the low 5 bits on the left.
fn glyph(c: char) -> [u8; 7] {
    match c {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '@' => [0x0E, 0x11, 0x17, 0x15, 0x17, 0x10, 0x0E],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        _ => [0; 7],
    }
}

const INK: Rgb<u8> = Rgb([40, 40, 48]);
const GRID: Rgb<u8> = Rgb([225, 225, 232]);
/// Series colours (colour-blind safe: Okabe–Ito).
pub const COLOURS: [[u8; 3]; 6] = [[0, 114, 178], [230, 159, 0], [0, 158, 115], [204, 121, 167], [86, 180, 233], [213, 94, 0]];

fn put(image: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < image.width() && (y as u32) < image.height() {
        image.put_pixel(x as u32, y as u32, colour);
    }
}

/// Draws `text` (upper-cased) with its top-left corner at (x, y), each font pixel `scale` wide.
fn text(image: &mut RgbImage, x: i64, y: i64, label: &str, scale: i64, colour: Rgb<u8>) {
    for (i, c) in label.to_uppercase().chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(image, x + (i as i64 * 6 + col) * scale + dx, y + row as i64 * scale + dy, colour);
                        }
                    }
                }
            }
        }
    }
}

fn text_width(label: &str, scale: i64) -> i64 {
    label.chars().count() as i64 * 6 * scale
}

fn line(image: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), colour: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i64).max(1);
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        put(image, (x0 + (x1 - x0) * t).round() as i64, (y0 + (y1 - y0) * t).round() as i64, colour);
    }
}

fn encode(image: RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| Error::Other(format!("cannot encode chart: {e}")))?;
    Ok(out)
}

const WIDTH: u32 = 900;
const HEIGHT: u32 = 480;
const LEFT: f64 = 70.0;
const TOP: f64 = 50.0;
const RIGHT: f64 = 200.0;
const BOTTOM: f64 = 60.0;

fn frame(title: &str, y_max: f64) -> RgbImage {
    let mut image = RgbImage::from_pixel(WIDTH, HEIGHT, Rgb([255, 255, 255]));
    text(&mut image, LEFT as i64, 14, title, 2, INK);
    let plot_h = HEIGHT as f64 - TOP - BOTTOM;
    for i in 0..=4 {
        let y = TOP + plot_h * (1.0 - i as f64 / 4.0);
        line(&mut image, (LEFT, y), (WIDTH as f64 - RIGHT, y), GRID);
        let label = format!("{:.2}", y_max * i as f64 / 4.0);
        text(&mut image, LEFT as i64 - text_width(&label, 1) - 6, y as i64 - 3, &label, 1, INK);
    }
    image
}

fn legend(image: &mut RgbImage, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP as i64 + i as i64 * 18;
        let x = WIDTH as i64 - RIGHT as i64 + 16;
        let colour = Rgb(COLOURS[i % COLOURS.len()]);
        for dy in 0..9 {
            for dx in 0..14 {
                put(image, x + dx, y + dy, colour);
            }
        }
        text(image, x + 20, y + 1, name, 1, INK);
    }
}

/// Curves `(name, points (x, y))` on shared axes, y from 0 to the largest value.
pub fn line_chart(title: &str, x_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> Result<Vec<u8>> {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (x_max, y_max) = points.fold((1e-9f64, 1e-9f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let mut image = frame(title, y_max);
    let (plot_w, plot_h) = (WIDTH as f64 - LEFT - RIGHT, HEIGHT as f64 - TOP - BOTTOM);
    let at = |(x, y): (f64, f64)| (LEFT + plot_w * x / x_max, TOP + plot_h * (1.0 - y / y_max));
    for (i, (_, points)) in series.iter().enumerate() {
        let colour = Rgb(COLOURS[i % COLOURS.len()]);
        for pair in points.windows(2) {
            line(&mut image, at(pair[0]), at(pair[1]), colour);
        }
    }
    let x_text = format!("{x_label} (0 TO {x_max:.0})");
    text(&mut image, LEFT as i64, HEIGHT as i64 - BOTTOM as i64 + 16, &x_text, 1, INK);
    legend(&mut image, &series.iter().map(|s| s.0).collect::<Vec<_>>());
    encode(image)
}

/// Grouped bars: one group per `groups` entry, one bar per series, values from 0 to 1.
pub fn bar_chart(title: &str, groups: &[&str], series: &[(&str, Vec<f64>)]) -> Result<Vec<u8>> {
    let mut image = frame(title, 1.0);
    let (plot_w, plot_h) = (WIDTH as f64 - LEFT - RIGHT, HEIGHT as f64 - TOP - BOTTOM);
    let group_w = plot_w / groups.len().max(1) as f64;
    let bar_w = (group_w * 0.8 / series.len().max(1) as f64).floor();
    for (g, group) in groups.iter().enumerate() {
        let x0 = LEFT + g as f64 * group_w + group_w * 0.1;
        for (s, (_, values)) in series.iter().enumerate() {
            let v = values.get(g).copied().unwrap_or(0.0).clamp(0.0, 1.0);
            let colour = Rgb(COLOURS[s % COLOURS.len()]);
            let (left, top) = (x0 + s as f64 * bar_w, TOP + plot_h * (1.0 - v));
            for x in left as i64..(left + bar_w - 2.0) as i64 {
                for y in top as i64..(TOP + plot_h) as i64 {
                    put(&mut image, x, y, colour);
                }
            }
        }
        let label_x = (LEFT + g as f64 * group_w + group_w / 2.0) as i64 - text_width(group, 1) / 2;
        text(&mut image, label_x, (TOP + plot_h) as i64 + 10, group, 1, INK);
    }
    legend(&mut image, &series.iter().map(|s| s.0).collect::<Vec<_>>());
    encode(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_character_has_a_glyph() {
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:-+/%@()>=".chars() {
            assert!(glyph(c).iter().any(|&row| row != 0), "{c}");
        }
    }

    #[test]
    fn bars_are_drawn_to_their_height() {
        let png = bar_chart("T", &["A"], &[("ONE", vec![0.5])]).unwrap();
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        let plot_h = HEIGHT as f64 - TOP - BOTTOM;
        let x = (LEFT + (WIDTH as f64 - LEFT - RIGHT) * 0.1 + 2.0) as u32;
        let colour = Rgb(COLOURS[0]);
        assert_eq!(*image.get_pixel(x, (TOP + plot_h * 0.5 + 3.0) as u32), colour, "inside the bar");
        assert_ne!(*image.get_pixel(x, (TOP + plot_h * 0.5 - 3.0) as u32), colour, "above the bar");
    }
}

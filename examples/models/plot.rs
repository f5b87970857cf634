//! Minimal raster figures written as PNG: scatter panels and image grids, with a 3x5 pixel font
//! for titles.

use std::io::BufWriter;
use std::path::Path;

use ndarray::ArrayView2;

pub type Rgb = [u8; 3];
pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GREY: Rgb = [200, 200, 200];
pub const BLUE: Rgb = [31, 119, 180];
pub const ORANGE: Rgb = [255, 127, 14];

/// An RGB image.
pub struct Canvas {
    pub w: usize,
    pub h: usize,
    px: Vec<u8>,
}

impl Canvas {
    pub fn new(w: usize, h: usize, bg: Rgb) -> Self {
        let mut px = Vec::with_capacity(w * h * 3);
        for _ in 0..w * h {
            px.extend_from_slice(&bg);
        }
        Canvas { w, h, px }
    }

    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: Rgb) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, c);
            }
        }
    }

    /// A 1-pixel frame.
    pub fn frame(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: Rgb) {
        self.rect(x0, y0, w, 1, c);
        self.rect(x0, y0 + h - 1, w, 1, c);
        self.rect(x0, y0, 1, h, c);
        self.rect(x0 + w - 1, y0, 1, h, c);
    }

    /// Text in the 3x5 font, `scale` pixels per font pixel (upper-cased).
    pub fn text(&mut self, x0: i64, y0: i64, s: &str, scale: i64, c: Rgb) {
        let mut x = x0;
        for ch in s.chars() {
            let g = glyph(ch.to_ascii_uppercase());
            for row in 0..5 {
                for col in 0..3 {
                    if g >> (14 - (row * 3 + col)) & 1 == 1 {
                        self.rect(x + col * scale, y0 + row * scale, scale, scale, c);
                    }
                }
            }
            x += 4 * scale;
        }
    }

    /// A scatter panel: points in data coordinates `[-lim, lim]^2` drawn into the box.
    pub fn scatter(&mut self, x0: i64, y0: i64, size: i64, lim: f64, pts: ArrayView2<'_, f32>, c: Rgb) {
        self.frame(x0, y0, size, size, GREY);
        for p in pts.rows() {
            let u = (f64::from(p[0]) + lim) / (2.0 * lim);
            let v = (lim - f64::from(p[1])) / (2.0 * lim);
            if (0.0..1.0).contains(&u) && (0.0..1.0).contains(&v) {
                let (px, py) = (x0 + (u * size as f64) as i64, y0 + (v * size as f64) as i64);
                self.rect(px - 1, py - 1, 2, 2, c);
            }
        }
    }

    /// A grayscale image (values in [-1, 1] map to black..white), `scale` pixels per pixel.
    pub fn image(&mut self, x0: i64, y0: i64, img: ArrayView2<'_, f32>, scale: i64) {
        for ((y, x), &v) in img.indexed_iter() {
            let g = ((f64::from(v).clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
            self.rect(
                x0 + x as i64 * scale,
                y0 + y as i64 * scale,
                scale,
                scale,
                [g, g, g],
            );
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(path)?;
        let mut enc = png::Encoder::new(BufWriter::new(file), self.w as u32, self.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer.write_image_data(&self.px).map_err(std::io::Error::other)
    }
}

/// 3x5 glyphs, 15 bits row-major (top row in the high bits).
fn glyph(c: char) -> u16 {
    let rows: [u8; 5] = match c {
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [6, 1, 2, 4, 7],
        '3' => [6, 1, 2, 1, 6],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 6, 1, 6],
        '6' => [3, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 6],
        '+' => [0, 2, 7, 2, 0],
        '-' => [0, 0, 7, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        '=' => [0, 7, 0, 7, 0],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        '_' => [0, 0, 0, 0, 7],
        _ => [0, 0, 0, 0, 0],
    };
    rows.iter().fold(0u16, |acc, &r| (acc << 3) | u16::from(r))
}

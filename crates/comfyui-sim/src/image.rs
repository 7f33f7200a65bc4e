//! Real pixels, the way ComfyUI holds them: a batch of RGB frames with `f32` channels in
//! `0.0..=1.0`, row-major, height × width × 3.
//!
//! A frame filled with one colour is kept as [`Frame::Solid`] so that the big
//! weightless workflows of the captures (2048² canvases blurred three times) stay cheap;
//! every operation gives the same pixels as it would on the expanded frame.

use std::io::Cursor;

use crate::pyfmt::{PyErr, py_round};

#[derive(Debug, Clone)]
pub enum Frame {
    Solid([f32; 3]),
    Data(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct Images {
    pub width: usize,
    pub height: usize,
    pub frames: Vec<Frame>,
}

#[derive(Debug, Clone)]
pub struct Masks {
    pub width: usize,
    pub height: usize,
    pub frames: Vec<Vec<f32>>,
}

impl Frame {
    fn pixels(&self, w: usize, h: usize) -> Vec<f32> {
        match self {
            Frame::Solid(c) => {
                let mut v = Vec::with_capacity(w * h * 3);
                for _ in 0..w * h {
                    v.extend_from_slice(c);
                }
                v
            }
            Frame::Data(d) => d.clone(),
        }
    }
}

impl Images {
    /// `EmptyImage`: packed 0xRRGGBB colour, each channel divided by 255 in f32.
    pub fn solid(width: usize, height: usize, batch: usize, color: u32) -> Images {
        let c = [
            ((color >> 16) & 0xFF) as f32 / 255.0,
            ((color >> 8) & 0xFF) as f32 / 255.0,
            (color & 0xFF) as f32 / 255.0,
        ];
        Images {
            width,
            height,
            frames: vec![Frame::Solid(c); batch],
        }
    }

    /// `ImageInvert`: `1.0 - x`.
    pub fn invert(&self) -> Images {
        let frames = self
            .frames
            .iter()
            .map(|f| match f {
                Frame::Solid(c) => Frame::Solid([1.0 - c[0], 1.0 - c[1], 1.0 - c[2]]),
                Frame::Data(d) => Frame::Data(d.iter().map(|x| 1.0 - x).collect()),
            })
            .collect();
        Images {
            width: self.width,
            height: self.height,
            frames,
        }
    }

    /// `ImageBlur`: a gaussian whose kernel is sampled on `linspace(-1, 1, 2r+1)`
    /// (so sigma is relative to the radius), with reflect padding, as ComfyUI does.
    pub fn blur(&self, radius: usize, sigma: f64) -> Result<Images, PyErr> {
        if radius == 0 {
            return Ok(self.clone());
        }
        if radius >= self.width || radius >= self.height {
            let dim = if radius >= self.width { 3 } else { 2 };
            return Err(PyErr::new(
                "RuntimeError",
                format!(
                    "Argument #4: Padding size should be less than the corresponding input dimension, but got: padding ({radius}, {radius}) at dimension {dim} of input [{}, 3, {}, {}]",
                    self.frames.len(),
                    self.height,
                    self.width
                ),
            ));
        }
        let k = 2 * radius + 1;
        let mut kernel: Vec<f64> = (0..k)
            .map(|i| {
                let t = -1.0 + 2.0 * i as f64 / (k - 1) as f64;
                (-(t * t) / (2.0 * sigma * sigma)).exp()
            })
            .collect();
        let sum: f64 = kernel.iter().sum();
        kernel.iter_mut().for_each(|x| *x /= sum);
        let (w, h) = (self.width, self.height);
        let reflect = |i: isize, n: usize| -> usize {
            let n = n as isize;
            let mut i = i;
            if i < 0 {
                i = -i;
            }
            if i >= n {
                i = 2 * (n - 1) - i;
            }
            i as usize
        };
        let frames = self
            .frames
            .iter()
            .map(|f| match f {
                Frame::Solid(c) => Frame::Solid(*c),
                Frame::Data(d) => {
                    let mut tmp = vec![0f32; d.len()];
                    for y in 0..h {
                        for x in 0..w {
                            for ch in 0..3 {
                                let mut acc = 0f64;
                                for (j, kv) in kernel.iter().enumerate() {
                                    let sx = reflect(x as isize + j as isize - radius as isize, w);
                                    acc += kv * d[(y * w + sx) * 3 + ch] as f64;
                                }
                                tmp[(y * w + x) * 3 + ch] = acc as f32;
                            }
                        }
                    }
                    let mut out = vec![0f32; d.len()];
                    for y in 0..h {
                        for x in 0..w {
                            for ch in 0..3 {
                                let mut acc = 0f64;
                                for (j, kv) in kernel.iter().enumerate() {
                                    let sy = reflect(y as isize + j as isize - radius as isize, h);
                                    acc += kv * tmp[(sy * w + x) * 3 + ch] as f64;
                                }
                                out[(y * w + x) * 3 + ch] = acc as f32;
                            }
                        }
                    }
                    Frame::Data(out)
                }
            })
            .collect();
        Ok(Images {
            width: w,
            height: h,
            frames,
        })
    }

    /// `ImageScale`: `comfy.utils.common_upscale` (crop `center` first), then resample.
    /// `nearest-exact`, `bilinear`, `area` and `bicubic` follow torch's `interpolate`;
    /// `lanczos` is approximated by bicubic.
    pub fn scale(&self, method: &str, width: usize, height: usize, crop: &str) -> Images {
        let (mut width, mut height) = (width, height);
        if width == 0 && height == 0 {
            return self.clone();
        }
        let (ow, oh) = (self.width as f64, self.height as f64);
        if width == 0 {
            width = (py_round(ow * height as f64 / oh) as usize).max(1);
        } else if height == 0 {
            height = (py_round(oh * width as f64 / ow) as usize).max(1);
        }
        let (mut x0, mut y0, mut cw, mut ch) = (0usize, 0usize, self.width, self.height);
        if crop == "center" {
            let old_aspect = ow / oh;
            let new_aspect = width as f64 / height as f64;
            if old_aspect > new_aspect {
                x0 = py_round((ow - ow * (new_aspect / old_aspect)) / 2.0) as usize;
            } else if old_aspect < new_aspect {
                y0 = py_round((oh - oh * (old_aspect / new_aspect)) / 2.0) as usize;
            }
            cw = self.width - 2 * x0;
            ch = self.height - 2 * y0;
        }
        let frames = self
            .frames
            .iter()
            .map(|f| match f {
                Frame::Solid(c) => Frame::Solid(*c),
                Frame::Data(_) => {
                    let src = f.pixels(self.width, self.height);
                    let get = |x: usize, y: usize, c: usize| {
                        src[((y + y0) * self.width + x + x0) * 3 + c]
                    };
                    Frame::Data(resample(&get, cw, ch, width, height, method))
                }
            })
            .collect();
        Images {
            width,
            height,
            frames,
        }
    }

    /// Encode frame `i` as an 8-bit RGB PNG: `clip(255 * x, 0, 255)` truncated, as numpy does.
    pub fn to_png(&self, i: usize, text: &[(String, String)], fast: bool) -> Vec<u8> {
        let (w, h) = (self.width, self.height);
        let mut rgb = Vec::with_capacity(w * h * 3);
        match &self.frames[i] {
            Frame::Solid(c) => {
                let px = [to_u8(c[0]), to_u8(c[1]), to_u8(c[2])];
                for _ in 0..w * h {
                    rgb.extend_from_slice(&px);
                }
            }
            Frame::Data(d) => rgb.extend(d.iter().map(|x| to_u8(*x))),
        }
        encode_png(w as u32, h as u32, png::ColorType::Rgb, &rgb, text, fast)
    }
}

fn to_u8(x: f32) -> u8 {
    (255.0f32 * x).clamp(0.0, 255.0) as u8
}

pub fn encode_png(
    w: u32,
    h: u32,
    color: png::ColorType,
    data: &[u8],
    text: &[(String, String)],
    fast: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(if fast {
            png::Compression::Fast
        } else {
            png::Compression::Default
        });
        for (k, v) in text {
            let _ = enc.add_text_chunk(k.clone(), v.clone());
        }
        let mut writer = enc.write_header().expect("png header");
        writer.write_image_data(data).expect("png data");
    }
    out
}

/// A decoded image file as 8-bit channels.
pub struct Decoded {
    pub width: usize,
    pub height: usize,
    /// 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels per pixel.
    pub channels: usize,
    pub data: Vec<u8>,
}

pub fn decode_png(bytes: &[u8]) -> Option<Decoded> {
    let mut dec = png::Decoder::new(Cursor::new(bytes));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().ok()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).ok()?;
    buf.truncate(info.buffer_size());
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return None,
    };
    Some(Decoded {
        width: info.width as usize,
        height: info.height as usize,
        channels,
        data: buf,
    })
}

impl Decoded {
    /// `LoadImage`: RGB in f32 (`/ 255.0`), and the mask `1 - alpha` (or 64×64 zeros).
    pub fn to_image_and_mask(&self) -> (Images, Masks) {
        let n = self.width * self.height;
        let mut rgb = Vec::with_capacity(n * 3);
        let mut alpha: Option<Vec<f32>> = None;
        for p in 0..n {
            let px = &self.data[p * self.channels..(p + 1) * self.channels];
            let (r, g, b) = if self.channels <= 2 {
                (px[0], px[0], px[0])
            } else {
                (px[0], px[1], px[2])
            };
            rgb.extend([r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0]);
            if self.channels == 2 || self.channels == 4 {
                alpha
                    .get_or_insert_with(|| Vec::with_capacity(n))
                    .push(1.0 - px[self.channels - 1] as f32 / 255.0);
            }
        }
        let masks = match alpha {
            Some(a) => Masks {
                width: self.width,
                height: self.height,
                frames: vec![a],
            },
            None => Masks {
                width: 64,
                height: 64,
                frames: vec![vec![0.0; 64 * 64]],
            },
        };
        (
            Images {
                width: self.width,
                height: self.height,
                frames: vec![Frame::Data(rgb)],
            },
            masks,
        )
    }

    /// The RGB channels only, as 8-bit (for `/view?channel=rgb`).
    pub fn rgb8(&self) -> Vec<u8> {
        let n = self.width * self.height;
        let mut out = Vec::with_capacity(n * 3);
        for p in 0..n {
            let px = &self.data[p * self.channels..(p + 1) * self.channels];
            if self.channels <= 2 {
                out.extend([px[0], px[0], px[0]]);
            } else {
                out.extend(&px[..3]);
            }
        }
        out
    }

    /// An RGBA image holding only the alpha channel (for `/view?channel=a`).
    pub fn alpha_only_rgba8(&self) -> Vec<u8> {
        let n = self.width * self.height;
        let mut out = Vec::with_capacity(n * 4);
        for p in 0..n {
            let px = &self.data[p * self.channels..(p + 1) * self.channels];
            let a = if self.channels == 2 || self.channels == 4 {
                px[self.channels - 1]
            } else {
                255
            };
            out.extend([0, 0, 0, a]);
        }
        out
    }
}

fn resample(
    get: &dyn Fn(usize, usize, usize) -> f32,
    iw: usize,
    ih: usize,
    ow: usize,
    oh: usize,
    method: &str,
) -> Vec<f32> {
    let mut out = vec![0f32; ow * oh * 3];
    let sx = iw as f64 / ow as f64;
    let sy = ih as f64 / oh as f64;
    for y in 0..oh {
        for x in 0..ow {
            for c in 0..3 {
                let v = match method {
                    "nearest-exact" => {
                        let px = (((x as f64 + 0.5) * sx).floor() as usize).min(iw - 1);
                        let py = (((y as f64 + 0.5) * sy).floor() as usize).min(ih - 1);
                        get(px, py, c)
                    }
                    "area" => {
                        let (x0, x1) = ((x * iw) / ow, ((x + 1) * iw).div_ceil(ow));
                        let (y0, y1) = ((y * ih) / oh, ((y + 1) * ih).div_ceil(oh));
                        let mut acc = 0f64;
                        for yy in y0..y1 {
                            for xx in x0..x1 {
                                acc += get(xx, yy, c) as f64;
                            }
                        }
                        (acc / ((x1 - x0) * (y1 - y0)) as f64) as f32
                    }
                    "bicubic" | "lanczos" => {
                        let fx = (x as f64 + 0.5) * sx - 0.5;
                        let fy = (y as f64 + 0.5) * sy - 0.5;
                        let (bx, by) = (fx.floor(), fy.floor());
                        let (tx, ty) = (fx - bx, fy - by);
                        let mut acc = 0f64;
                        for j in -1..=2isize {
                            let wy = cubic(j as f64 - ty);
                            let yy = (by as isize + j).clamp(0, ih as isize - 1) as usize;
                            for i in -1..=2isize {
                                let wx = cubic(i as f64 - tx);
                                let xx = (bx as isize + i).clamp(0, iw as isize - 1) as usize;
                                acc += wx * wy * get(xx, yy, c) as f64;
                            }
                        }
                        acc as f32
                    }
                    _ => {
                        // bilinear, align_corners=False
                        let fx = ((x as f64 + 0.5) * sx - 0.5).max(0.0);
                        let fy = ((y as f64 + 0.5) * sy - 0.5).max(0.0);
                        let (x0, y0) = ((fx as usize).min(iw - 1), (fy as usize).min(ih - 1));
                        let (x1, y1) = ((x0 + 1).min(iw - 1), (y0 + 1).min(ih - 1));
                        let (tx, ty) = (fx - x0 as f64, fy - y0 as f64);
                        let top = get(x0, y0, c) as f64 * (1.0 - tx) + get(x1, y0, c) as f64 * tx;
                        let bot = get(x0, y1, c) as f64 * (1.0 - tx) + get(x1, y1, c) as f64 * tx;
                        (top * (1.0 - ty) + bot * ty) as f32
                    }
                };
                out[(y * ow + x) * 3 + c] = v;
            }
        }
    }
    out
}

/// Keys' cubic convolution kernel with a = -0.75 (torch's bicubic).
fn cubic(t: f64) -> f64 {
    let a = -0.75;
    let t = t.abs();
    if t <= 1.0 {
        (a + 2.0) * t * t * t - (a + 3.0) * t * t + 1.0
    } else if t < 2.0 {
        a * t * t * t - 5.0 * a * t * t + 8.0 * a * t - 4.0 * a
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn red_inverted_is_cyan() {
        let img = Images::solid(4, 4, 1, 0xFF0000).invert();
        let png = img.to_png(0, &[], true);
        let d = decode_png(&png).unwrap();
        assert_eq!((d.width, d.height, d.channels), (4, 4, 3));
        assert_eq!(&d.data[..3], &[0, 255, 255]);
    }

    #[test]
    fn blur_keeps_solid_and_smooths_edges() {
        let mut data = vec![0f32; 8 * 8 * 3];
        for y in 0..8 {
            for x in 4..8 {
                for c in 0..3 {
                    data[(y * 8 + x) * 3 + c] = 1.0;
                }
            }
        }
        let img = Images {
            width: 8,
            height: 8,
            frames: vec![Frame::Data(data)],
        };
        let b = img.blur(2, 1.0).unwrap();
        let Frame::Data(d) = &b.frames[0] else {
            panic!()
        };
        assert!(d[3 * 3] > 0.0 && d[3 * 3] < 0.5);
        assert!(d[4 * 3] > 0.5 && d[4 * 3] < 1.0);
        assert!(Images::solid(4, 4, 1, 0).blur(31, 1.0).is_err());
    }

    #[test]
    fn scale_changes_size() {
        let img = Images::solid(10, 20, 1, 0x00FF00);
        let s = img.scale("bilinear", 5, 0, "disabled");
        assert_eq!((s.width, s.height), (5, 10));
        let data = Images {
            width: 2,
            height: 2,
            frames: vec![Frame::Data(vec![
                0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0,
            ])],
        };
        for m in ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"] {
            let s = data.scale(m, 4, 4, "center");
            assert_eq!((s.width, s.height), (4, 4));
        }
    }
}

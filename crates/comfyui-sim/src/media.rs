//! Real video and audio files for the simulator's video and audio nodes, written in
//! plain Rust with no codec library.
//!
//! **Video: H.264 in MP4.** Every frame is an IDR picture made only of `I_PCM`
//! macroblocks: the H.264 syntax that carries raw 8-bit samples with no prediction or
//! transform. The bitstream is therefore large (384 bytes per 16×16 macroblock) but
//! valid for every H.264 decoder (Constrained Baseline, level 3), and it is written in a
//! few dozen lines. It is packed in an MP4 (ISO BMFF) with `moov` before `mdat`, so a
//! browser can start playing and seek with Range requests. Frames are scaled (nearest)
//! to at most [`MAX_VIDEO_SIDE`] and to whole macroblocks, to keep files small.
//!
//! **Audio: WAV.** 16-bit PCM in a RIFF container.

use crate::image::{Frame, Images};

/// The largest side of a simulated video, in pixels (a multiple of 16).
pub const MAX_VIDEO_SIDE: usize = 128;

/// 16-bit PCM samples, interleaved by channel, as a WAV file.
pub fn wav(samples: &[i16], sample_rate: u32, channels: u16) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let block_align = channels * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * block_align as u32).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// The video's size for frames of `w`×`h`: scaled down to fit [`MAX_VIDEO_SIDE`],
/// then rounded down to whole macroblocks (at least one).
pub fn video_size(w: usize, h: usize) -> (usize, usize) {
    let (w, h) = (w.max(1), h.max(1));
    let scale = (MAX_VIDEO_SIDE as f64 / w.max(h) as f64).min(1.0);
    let fit = |v: usize| ((((v as f64) * scale) as usize) / 16).max(1) * 16;
    (fit(w), fit(h))
}

/// Every frame of `img` as an H.264 MP4 at `fps` frames per second.
pub fn mp4(img: &Images, fps: f64) -> Vec<u8> {
    let (w, h) = video_size(img.width, img.height);
    let sps = nal(0x67, &sps(w, h));
    let pps = nal(0x68, &pps());
    let samples: Vec<Vec<u8>> = (0..img.frames.len())
        .map(|i| {
            let (y, u, v) = yuv420(img, i, w, h);
            let slice = nal(0x65, &idr_slice(i as u32, w, h, &y, &u, &v));
            let mut s = (slice.len() as u32).to_be_bytes().to_vec();
            s.extend_from_slice(&slice);
            s
        })
        .collect();
    // Timescale 1000 (milliseconds); every frame lasts the same.
    let delta = (1000.0 / fps.max(0.01)).round().max(1.0) as u32;
    let moov_at = |offset: u32| moov(w, h, delta, &samples, &sps, &pps, offset);
    let ftyp = boxed(
        b"ftyp",
        &[
            b"isom".as_slice(),
            &0x200u32.to_be_bytes(),
            b"isomiso2avc1mp41",
        ]
        .concat(),
    );
    let first = ftyp.len() + moov_at(0).len() + 8;
    let moov = moov_at(first as u32);
    let mdat = boxed(b"mdat", &samples.concat());
    [ftyp, moov, mdat].concat()
}

/// BT.601 limited-range planes (4:2:0) of frame `i`, scaled to `w`×`h`. Samples stay
/// in 1..=254: some decoders refuse a PCM sample of 0.
fn yuv420(img: &Images, i: usize, w: usize, h: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let rgb = |x: usize, y: usize| -> [i32; 3] {
        let sx = (x * img.width / w).min(img.width.saturating_sub(1));
        let sy = (y * img.height / h).min(img.height.saturating_sub(1));
        let px = |c: f32| (c.clamp(0.0, 1.0) * 255.0).round() as i32;
        match &img.frames[i] {
            Frame::Solid(c) => c.map(px),
            Frame::Data(d) => {
                let at = (sy * img.width + sx) * 3;
                [px(d[at]), px(d[at + 1]), px(d[at + 2])]
            }
        }
    };
    let clamp = |v: i32| v.clamp(1, 254) as u8;
    let mut ys = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let [r, g, b] = rgb(x, y);
            ys.push(clamp(((66 * r + 129 * g + 25 * b + 128) >> 8) + 16));
        }
    }
    let (mut us, mut vs) = (Vec::new(), Vec::new());
    for y in (0..h).step_by(2) {
        for x in (0..w).step_by(2) {
            let mut acc = [0i32; 3];
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = rgb(x + dx, y + dy);
                (0..3).for_each(|c| acc[c] += p[c]);
            }
            let [r, g, b] = acc.map(|v| v / 4);
            us.push(clamp(((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128));
            vs.push(clamp(((112 * r - 94 * g - 18 * b + 128) >> 8) + 128));
        }
    }
    (ys, us, vs)
}

/// An MSB-first bit writer with Exp-Golomb codes.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u8,
    n: u8,
}

impl Bits {
    fn bit(&mut self, b: bool) {
        self.acc = (self.acc << 1) | b as u8;
        self.n += 1;
        if self.n == 8 {
            self.out.push(self.acc);
            (self.acc, self.n) = (0, 0);
        }
    }
    fn u(&mut self, bits: u32, v: u32) {
        (0..bits).rev().for_each(|i| self.bit((v >> i) & 1 == 1));
    }
    fn ue(&mut self, v: u32) {
        let x = v + 1;
        let len = 32 - x.leading_zeros();
        self.u(len - 1, 0);
        self.u(len, x);
    }
    fn align_zero(&mut self) {
        while self.n != 0 {
            self.bit(false);
        }
    }
    /// `rbsp_trailing_bits`.
    fn finish(mut self) -> Vec<u8> {
        self.bit(true);
        self.align_zero();
        self.out
    }
}

const PROFILE_BASELINE: u32 = 66;
const CONSTRAINTS: u32 = 0xC0; // constraint_set0 and set1: Constrained Baseline
const LEVEL_3: u32 = 30;

fn sps(w: usize, h: usize) -> Vec<u8> {
    let mut b = Bits::default();
    b.u(8, PROFILE_BASELINE);
    b.u(8, CONSTRAINTS);
    b.u(8, LEVEL_3);
    b.ue(0); // seq_parameter_set_id
    b.ue(0); // log2_max_frame_num_minus4
    b.ue(2); // pic_order_cnt_type: output order is decoding order
    b.ue(1); // max_num_ref_frames
    b.bit(false); // gaps_in_frame_num_value_allowed_flag
    b.ue((w / 16 - 1) as u32);
    b.ue((h / 16 - 1) as u32);
    b.bit(true); // frame_mbs_only_flag
    b.bit(true); // direct_8x8_inference_flag
    b.bit(false); // frame_cropping_flag
    b.bit(false); // vui_parameters_present_flag
    b.finish()
}

fn pps() -> Vec<u8> {
    let mut b = Bits::default();
    b.ue(0); // pic_parameter_set_id
    b.ue(0); // seq_parameter_set_id
    b.bit(false); // entropy_coding_mode_flag: CAVLC
    b.bit(false); // bottom_field_pic_order_in_frame_present_flag
    b.ue(0); // num_slice_groups_minus1
    b.ue(0); // num_ref_idx_l0_default_active_minus1
    b.ue(0); // num_ref_idx_l1_default_active_minus1
    b.bit(false); // weighted_pred_flag
    b.u(2, 0); // weighted_bipred_idc
    b.ue(0); // pic_init_qp_minus26 (se 0 = ue 0)
    b.ue(0); // pic_init_qs_minus26
    b.ue(0); // chroma_qp_index_offset
    b.bit(false); // deblocking_filter_control_present_flag
    b.bit(false); // constrained_intra_pred_flag
    b.bit(false); // redundant_pic_cnt_present_flag
    b.finish()
}

/// `mb_type` 25 in an I slice: the macroblock's samples follow raw.
const I_PCM: u32 = 25;

fn idr_slice(idr_pic_id: u32, w: usize, h: usize, y: &[u8], u: &[u8], v: &[u8]) -> Vec<u8> {
    let mut b = Bits::default();
    b.ue(0); // first_mb_in_slice
    b.ue(7); // slice_type: I, and every slice of the picture is I
    b.ue(0); // pic_parameter_set_id
    b.u(4, 0); // frame_num
    b.ue(idr_pic_id & 0xFFFF); // consecutive IDR pictures differ
    b.bit(false); // no_output_of_prior_pics_flag
    b.bit(false); // long_term_reference_flag
    b.ue(0); // slice_qp_delta
    for my in 0..h / 16 {
        for mx in 0..w / 16 {
            b.ue(I_PCM);
            b.align_zero(); // pcm_alignment_zero_bit
            for r in 0..16 {
                let at = (my * 16 + r) * w + mx * 16;
                y[at..at + 16].iter().for_each(|&s| b.u(8, s as u32));
            }
            for plane in [u, v] {
                for r in 0..8 {
                    let at = (my * 8 + r) * (w / 2) + mx * 8;
                    plane[at..at + 8].iter().for_each(|&s| b.u(8, s as u32));
                }
            }
        }
    }
    b.finish()
}

/// A NAL unit: its header byte and the payload with emulation prevention
/// (`00 00 0x` with x ≤ 3 becomes `00 00 03 0x`).
fn nal(header: u8, rbsp: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut zeros = 0;
    for &byte in rbsp {
        if zeros >= 2 && byte <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(byte);
        zeros = if byte == 0 { zeros + 1 } else { 0 };
    }
    out
}

fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out
}

fn full(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&flags.to_be_bytes()[1..]);
    b.extend_from_slice(body);
    boxed(kind, &b)
}

fn be32(vs: &[u32]) -> Vec<u8> {
    vs.iter().flat_map(|v| v.to_be_bytes()).collect()
}

const MATRIX: [u32; 9] = [0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x4000_0000];

fn moov(
    w: usize,
    h: usize,
    delta: u32,
    samples: &[Vec<u8>],
    sps: &[u8],
    pps: &[u8],
    chunk_offset: u32,
) -> Vec<u8> {
    let n = samples.len() as u32;
    let duration = n * delta; // timescale 1000 for movie and media alike
    let mvhd = full(
        b"mvhd",
        0,
        0,
        &[
            be32(&[0, 0, 1000, duration, 0x10000]),
            vec![1, 0, 0, 0],
            vec![0; 8],
            be32(&MATRIX),
            vec![0; 24],
            be32(&[2]),
        ]
        .concat(),
    );
    let tkhd = full(
        b"tkhd",
        0,
        3, // enabled, in movie
        &[
            be32(&[0, 0, 1, 0, duration, 0, 0, 0, 0]),
            be32(&MATRIX),
            be32(&[(w as u32) << 16, (h as u32) << 16]),
        ]
        .concat(),
    );
    let mdhd = full(
        b"mdhd",
        0,
        0,
        &[be32(&[0, 0, 1000, duration]), vec![0x55, 0xC4, 0, 0]].concat(),
    );
    let hdlr = full(
        b"hdlr",
        0,
        0,
        &[
            be32(&[0]),
            b"vide".to_vec(),
            vec![0; 12],
            b"VideoHandler\0".to_vec(),
        ]
        .concat(),
    );
    let avcc = boxed(
        b"avcC",
        &[
            vec![
                1,
                PROFILE_BASELINE as u8,
                CONSTRAINTS as u8,
                LEVEL_3 as u8,
                0xFF,
                0xE1,
            ],
            (sps.len() as u16).to_be_bytes().to_vec(),
            sps.to_vec(),
            vec![1],
            (pps.len() as u16).to_be_bytes().to_vec(),
            pps.to_vec(),
        ]
        .concat(),
    );
    let mut compressor = vec![0u8; 32];
    compressor[0] = 9;
    compressor[1..10].copy_from_slice(b"I_PCM AVC");
    let avc1 = boxed(
        b"avc1",
        &[
            vec![0; 6],
            vec![0, 1], // data_reference_index
            vec![0; 16],
            (w as u16).to_be_bytes().to_vec(),
            (h as u16).to_be_bytes().to_vec(),
            be32(&[0x0048_0000, 0x0048_0000, 0]),
            vec![0, 1], // frame_count
            compressor,
            vec![0, 0x18, 0xFF, 0xFF],
            avcc,
        ]
        .concat(),
    );
    let stsd = full(b"stsd", 0, 0, &[be32(&[1]), avc1].concat());
    let stts = full(b"stts", 0, 0, &be32(&[1, n, delta]));
    let stsc = full(b"stsc", 0, 0, &be32(&[1, 1, n, 1]));
    let sizes: Vec<u32> = samples.iter().map(|s| s.len() as u32).collect();
    let stsz = full(b"stsz", 0, 0, &[be32(&[0, n]), be32(&sizes)].concat());
    let stco = full(b"stco", 0, 0, &be32(&[1, chunk_offset]));
    let stbl = boxed(b"stbl", &[stsd, stts, stsc, stsz, stco].concat());
    let dref = full(
        b"dref",
        0,
        0,
        &[be32(&[1]), full(b"url ", 0, 1, &[])].concat(),
    );
    let minf = boxed(
        b"minf",
        &[full(b"vmhd", 0, 1, &[0; 8]), boxed(b"dinf", &dref), stbl].concat(),
    );
    let mdia = boxed(b"mdia", &[mdhd, hdlr, minf].concat());
    let trak = boxed(b"trak", &[tkhd, mdia].concat());
    boxed(b"moov", &[mvhd, trak].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_header_describes_its_samples() {
        let w = wav(&[0, 1000, -1000, 5], 8000, 2);
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes(w[4..8].try_into().unwrap()) as usize,
            w.len() - 8
        );
        assert_eq!(&w[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes([w[22], w[23]]), 2);
        assert_eq!(u32::from_le_bytes(w[24..28].try_into().unwrap()), 8000);
        assert_eq!(u32::from_le_bytes(w[40..44].try_into().unwrap()), 8);
        assert_eq!(&w[46..48], &1000i16.to_le_bytes());
    }

    #[test]
    fn exp_golomb_and_emulation_prevention() {
        let mut b = Bits::default();
        [0, 1, 2, 3, 25].iter().for_each(|&v| b.ue(v));
        // 1 010 011 00100 000011010, then the stop bit.
        assert_eq!(b.finish(), vec![0b1010_0110, 0b0100_0000, 0b1101_0100]);
        assert_eq!(
            nal(0x65, &[0, 0, 1, 0, 0, 0, 0]),
            vec![0x65, 0, 0, 3, 1, 0, 0, 3, 0, 0]
        );
    }

    #[test]
    fn sizes_fit_whole_macroblocks() {
        assert_eq!(video_size(512, 256), (128, 64));
        assert_eq!(video_size(8, 8), (16, 16));
        assert_eq!(video_size(100, 40), (96, 32));
    }

    /// Walks the boxes: the layout a player needs (ftyp, moov before mdat), and the
    /// sample table pointing at the samples in `mdat`.
    #[test]
    fn mp4_boxes_index_their_samples() {
        let img = Images::solid(64, 32, 3, 0x3366CC);
        let f = mp4(&img, 8.0);
        let top = children(&f);
        let kinds: Vec<&[u8]> = top.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [b"ftyp".as_slice(), b"moov", b"mdat"]);
        let stbl = path(&f, &[b"moov", b"trak", b"mdia", b"minf", b"stbl"]);
        let stco = find(stbl, b"stco");
        let offset = u32::from_be_bytes(stco[8..12].try_into().unwrap()) as usize;
        let stsz = find(stbl, b"stsz");
        assert_eq!(u32::from_be_bytes(stsz[8..12].try_into().unwrap()), 3);
        let first = u32::from_be_bytes(stsz[12..16].try_into().unwrap()) as usize;
        // The first sample: a length-prefixed IDR slice NAL, right at the chunk offset.
        let len = u32::from_be_bytes(f[offset..offset + 4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, first);
        assert_eq!(f[offset + 4], 0x65);
        // 8 macroblocks of 384 raw bytes each, plus headers.
        assert!(first > 8 * 384 && first < 8 * 384 + 64, "{first}");
        let stts = find(stbl, b"stts");
        assert_eq!(u32::from_be_bytes(stts[8..12].try_into().unwrap()), 3);
        assert_eq!(u32::from_be_bytes(stts[12..16].try_into().unwrap()), 125);
    }

    /// One red 16×16 macroblock, bit for bit: the slice header, `mb_type` I_PCM, the
    /// alignment, then BT.601 samples (Y 82, Cb 90, Cr 240) and the stop bit.
    #[test]
    fn an_idr_slice_carries_raw_bt601_samples() {
        let img = Images::solid(16, 16, 1, 0xFF0000);
        let (y, u, v) = yuv420(&img, 0, 16, 16);
        let slice = nal(0x65, &idr_slice(0, 16, 16, &y, &u, &v));
        // first_mb 0, slice_type 7, pps 0, frame_num 0000, idr_pic_id 0, two flags,
        // qp delta 0, mb_type 25, then zero bits to the byte boundary.
        assert_eq!(&slice[..5], &[0x65, 0x88, 0x84, 0x86, 0x80]);
        assert!(slice[5..261].iter().all(|&s| s == 82), "luma");
        assert!(slice[261..325].iter().all(|&s| s == 90), "Cb");
        assert!(slice[325..389].iter().all(|&s| s == 240), "Cr");
        assert_eq!(&slice[389..], &[0x80]);
        // Parameter sets: Constrained Baseline level 3, one macroblock each way.
        assert_eq!(&nal(0x67, &sps(16, 16))[..4], &[0x67, 66, 0xC0, 30]);
    }

    fn children(b: &[u8]) -> Vec<(&[u8], &[u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 8 <= b.len() {
            let size = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            assert!(size >= 8 && at + size <= b.len(), "box size {size} at {at}");
            out.push((&b[at + 4..at + 8], &b[at + 8..at + size]));
            at += size;
        }
        assert_eq!(at, b.len());
        out
    }

    fn find<'a>(b: &'a [u8], kind: &[u8; 4]) -> &'a [u8] {
        children(b)
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, body)| body)
            .unwrap_or_else(|| panic!("no {:?}", std::str::from_utf8(kind)))
    }

    fn path<'a>(b: &'a [u8], kinds: &[&[u8; 4]]) -> &'a [u8] {
        kinds.iter().fold(b, |acc, k| find(acc, k))
    }
}

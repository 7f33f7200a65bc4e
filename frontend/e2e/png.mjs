// Minimal PNG encoder (RGB, 8-bit) for tests and the dev mock. No dependencies.
import { deflateSync } from "node:zlib";

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf) {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, "latin1"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}

/**
 * Encodes an RGB image. `pixel(x, y)` returns [r, g, b].
 * @param {number} width
 * @param {number} height
 * @param {(x: number, y: number) => number[]} pixel
 * @returns {Buffer}
 */
export function encodePng(width, height, pixel) {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  let o = 0;
  for (let y = 0; y < height; y++) {
    raw[o++] = 0;
    for (let x = 0; x < width; x++) {
      const [r, g, b] = pixel(x, y);
      raw[o++] = r;
      raw[o++] = g;
      raw[o++] = b;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** A "photo" for upload tests: a sky-to-sunset gradient with a sun. */
export function samplePhoto(width = 320, height = 240) {
  return encodePng(width, height, (x, y) => {
    const t = y / height;
    const dx = x - width * 0.7;
    const dy = y - height * 0.35;
    if (dx * dx + dy * dy < (height * 0.12) ** 2) return [255, 214, 102];
    if (y > height * 0.72) return [Math.round(30 + 20 * (x / width)), Math.round(60 + 40 * t), 70];
    return [Math.round(60 + 195 * t), Math.round(90 + 60 * t), Math.round(200 - 90 * t)];
  });
}

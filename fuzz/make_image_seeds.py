#!/usr/bin/env python3
"""Writes systematic seeds of the `image` target into a folder (default /tmp/image_seeds):
PNGs of every colour type and bit depth, plain and Adam7-interlaced, with every row filter,
ancillary chunks, split IDATs and an animated (APNG) file, written by hand below; JPEGs of
every mode, chroma subsampling, progressive and Huffman-optimised coding, restart markers
and metadata segments, written by Pillow. Random mutation reaches each such decoder path
only by chance; these seeds hand it all of them. Needs pillow and numpy. Merge the seeds
into the corpus with libFuzzer (`-merge=1`), which keeps only those adding coverage."""
import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/image_seeds")
out.mkdir(parents=True, exist_ok=True)
count = 0


def put(name, data):
    global count
    (out / name).write_bytes(data)
    count += 1


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]


def pack_row(samples, depth):
    if depth == 16:
        return b"".join(struct.pack(">H", int(s)) for s in samples)
    if depth == 8:
        return bytes(int(s) for s in samples)
    row, acc, bits = bytearray(), 0, 0
    for s in samples:
        acc, bits = (acc << depth) | int(s), bits + depth
        if bits == 8:
            row.append(acc)
            acc, bits = 0, 0
    if bits:
        row.append(acc << (8 - bits))
    return bytes(row)


def filter_row(kind, row, prev, bpp):
    out = bytearray()
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i] if prev else 0
        c = prev[i - bpp] if prev and i >= bpp else 0
        if kind == 0:
            pred = 0
        elif kind == 1:
            pred = a
        elif kind == 2:
            pred = b
        elif kind == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out.append((x - pred) & 0xFF)
    return bytes([kind]) + bytes(out)


def scanlines(pixels, depth, channels):
    """Filtered scanlines of one (sub)image, cycling through the five filter types."""
    h, w = pixels.shape[:2]
    bpp = max(1, depth * channels // 8)
    data, prev = b"", None
    for y in range(h):
        row = pack_row(pixels[y].reshape(-1), depth)
        data += filter_row(y % 5, row, prev, bpp)
        prev = row
    return data


def png(w, h, colour, depth, interlace=False, extra=(), split=1, apng=False):
    channels = CHANNELS[colour]
    top = (1 << depth) - 1
    rng = np.random.default_rng(w * 131 + h * 7 + colour * 3 + depth)
    pixels = rng.integers(0, top + 1, size=(h, w, channels))
    if interlace:
        raw = b""
        for x0, y0, dx, dy in ADAM7:
            sub = pixels[y0::dy, x0::dx]
            if sub.size:
                raw += scanlines(sub, depth, channels)
    else:
        raw = scanlines(pixels, depth, channels)
    z = zlib.compress(raw, 9)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, int(interlace))
    body = chunk(b"IHDR", ihdr)
    if apng:
        body += chunk(b"acTL", struct.pack(">II", 2, 0))
        body += chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, w, h, 0, 0, 1, 10, 0, 0))
    for kind, data in extra:
        body += chunk(kind, data)
    if colour == 3:
        body += chunk(b"PLTE", bytes(i % 256 for i in range(3 * (top + 1))))
    step = max(1, -(-len(z) // split))
    for i in range(0, len(z), step):
        body += chunk(b"IDAT", z[i:i + step])
    if apng:
        fw, fh = max(1, w // 2), max(1, h // 2)
        body += chunk(b"fcTL", struct.pack(">IIIIIHHBB", 1, fw, fh, 0, 0, 1, 10, 1, 1))
        sub = scanlines(pixels[:fh, :fw], depth, channels)
        body += chunk(b"fdAT", struct.pack(">I", 2) + zlib.compress(sub))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


DEPTHS = {0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16]}
for colour, depths in DEPTHS.items():
    for depth in depths:
        for interlace in (False, True):
            for w, h in [(1, 1), (3, 5), (17, 9)]:
                put(f"png_c{colour}_d{depth}_i{int(interlace)}_{w}x{h}.png",
                    png(w, h, colour, depth, interlace))
        trns = {0: struct.pack(">H", 1), 2: struct.pack(">HHH", 1, 2, 3), 3: bytes([0, 128])}
        if colour in trns:
            put(f"png_c{colour}_d{depth}_trns.png",
                png(7, 6, colour, depth, extra=[(b"tRNS", trns[colour])]))
ancillary = [(b"gAMA", struct.pack(">I", 45455)),
             (b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)),
             (b"sRGB", b"\x00"), (b"pHYs", struct.pack(">IIB", 2835, 2835, 1)),
             (b"sBIT", b"\x05\x06\x05"), (b"bKGD", struct.pack(">HHH", 1, 2, 3)),
             (b"tEXt", b"Comment\x00seed"), (b"zTXt", b"Title\x00\x00" + zlib.compress(b"x")),
             (b"iTXt", b"Author\x00\x00\x00en\x00\x00seed"),
             (b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * 128)),
             (b"cICP", b"\x01\x0d\x00\x01"), (b"eXIf", b"MM\x00\x2a\x00\x00\x00\x08\x00\x00")]
for kind, data in ancillary:
    put(f"png_{kind.decode()}.png", png(5, 4, 2, 8, extra=[(kind, data)]))
put("png_split_idat.png", png(16, 16, 6, 8, split=7))
put("png_apng.png", png(8, 6, 6, 8, apng=True))
put("png_apng_interlaced.png", png(8, 6, 2, 16, interlace=True, apng=True))

rng = np.random.default_rng(1)
rgb = Image.fromarray(rng.integers(0, 256, size=(33, 47, 3), dtype=np.uint8))
modes = {"RGB": rgb, "L": rgb.convert("L"), "CMYK": rgb.convert("CMYK")}
for mode, img in modes.items():
    for size in [(1, 1), (15, 17), (47, 33)]:
        im = img.resize(size)
        for sub in ([0, 1, 2] if mode != "L" else [0]):
            for progressive in (False, True):
                for optimize in (False, True):
                    buf = io.BytesIO()
                    im.save(buf, "JPEG", quality=75, subsampling=sub, progressive=progressive,
                            optimize=optimize)
                    put(f"jpg_{mode}_{size[0]}x{size[1]}_s{sub}_p{int(progressive)}"
                        f"_o{int(optimize)}.jpg", buf.getvalue())
for quality in (1, 30, 95, 100):
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=quality)
    put(f"jpg_q{quality}.jpg", buf.getvalue())
for blocks in (1, 3):
    for progressive in (False, True):
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", restart_marker_blocks=blocks, progressive=progressive)
        put(f"jpg_restart{blocks}_p{int(progressive)}.jpg", buf.getvalue())
buf = io.BytesIO()
rgb.save(buf, "JPEG", restart_marker_rows=1)
put("jpg_restart_rows.jpg", buf.getvalue())
exif = Image.Exif()
exif[0x0112] = 6
buf = io.BytesIO()
rgb.save(buf, "JPEG", exif=exif.tobytes(), icc_profile=b"\x00" * 200, comment=b"seed",
         dpi=(72, 72))
put("jpg_metadata.jpg", buf.getvalue())
print(f"{count} seeds in {out}")

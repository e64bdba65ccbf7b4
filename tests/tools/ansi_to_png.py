#!/usr/bin/python3
"""Renders a terminal capture (`tmux capture-pane -e -p`) to a PNG, for the README.

    /usr/bin/python3 tests/tools/ansi_to_png.py target/tmp/top-screens/120x40.ansi docs/top.png

Reads SGR colour and attribute sequences (what tmux writes: 16 and 256 colours,
true colour, bold, reverse); everything else is drawn as text. Needs Pillow
(Debian: python3-pil) and DejaVu Sans Mono (fonts-dejavu-core).
"""

import re
import sys

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
SIZE = 15
BG = (24, 24, 27)
FG = (212, 212, 216)
# The 16 colours of a dark terminal theme (xterm's order).
BASIC = [
    (24, 24, 27), (220, 80, 80), (90, 200, 110), (220, 190, 90),
    (90, 140, 230), (190, 110, 210), (80, 190, 200), (200, 200, 205),
    (110, 110, 120), (255, 110, 110), (120, 230, 140), (250, 220, 120),
    (130, 170, 255), (220, 140, 240), (110, 220, 230), (250, 250, 250),
]


def colour256(n):
    if n < 16:
        return BASIC[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return (steps[n // 36], steps[n // 6 % 6], steps[n % 6])
    v = 8 + (n - 232) * 10
    return (v, v, v)


def sgr(params, st):
    """Applies one SGR sequence's parameters to the state dict."""
    p = [int(x) if x else 0 for x in params.split(";")] if params else [0]
    i = 0
    while i < len(p):
        c = p[i]
        if c == 0:
            st.update(fg=None, bg=None, bold=False, reverse=False)
        elif c == 1:
            st["bold"] = True
        elif c == 22:
            st["bold"] = False
        elif c == 7:
            st["reverse"] = True
        elif c == 27:
            st["reverse"] = False
        elif 30 <= c <= 37:
            st["fg"] = BASIC[c - 30]
        elif 90 <= c <= 97:
            st["fg"] = BASIC[c - 90 + 8]
        elif c == 39:
            st["fg"] = None
        elif 40 <= c <= 47:
            st["bg"] = BASIC[c - 40]
        elif 100 <= c <= 107:
            st["bg"] = BASIC[c - 100 + 8]
        elif c == 49:
            st["bg"] = None
        elif c in (38, 48) and i + 1 < len(p):
            key = "fg" if c == 38 else "bg"
            if p[i + 1] == 5 and i + 2 < len(p):
                st[key] = colour256(p[i + 2])
                i += 2
            elif p[i + 1] == 2 and i + 4 < len(p):
                st[key] = tuple(p[i + 2:i + 5])
                i += 4
        i += 1


def cells(line):
    """The line's characters, each with its colours and attributes."""
    st = {"fg": None, "bg": None, "bold": False, "reverse": False}
    out = []
    for m in re.finditer(r"\x1b\[([0-9;]*)m|\x1b\[[0-9;?]*[A-Za-z]|(.)", line):
        if m.group(2) is not None:
            out.append((m.group(2), dict(st)))
        elif m.group(0).endswith("m"):
            sgr(m.group(1), st)
    return out


def main(src, dst):
    lines = open(src, encoding="utf-8").read().rstrip("\n").split("\n")
    font = ImageFont.truetype(FONT, SIZE)
    bold = ImageFont.truetype(FONT_BOLD, SIZE)
    cw = round(font.getlength("M"))
    ch = round(SIZE * 1.3)
    rows = [cells(l) for l in lines]
    width = max(len(r) for r in rows)
    pad = 12
    img = Image.new("RGB", (width * cw + 2 * pad, len(rows) * ch + 2 * pad), BG)
    d = ImageDraw.Draw(img)
    for y, row in enumerate(rows):
        for x, (c, st) in enumerate(row):
            fg, bg = st["fg"] or FG, st["bg"] or BG
            if st["reverse"]:
                fg, bg = bg, fg
            px, py = pad + x * cw, pad + y * ch
            if bg != BG:
                d.rectangle([px, py, px + cw - 1, py + ch - 1], fill=bg)
            if c in "▁▂▃▄▅▆▇█":
                # Drawn as boxes: the font's block glyphs leave gaps between rows.
                h = round(ch * ("▁▂▃▄▅▆▇█".index(c) + 1) / 8)
                d.rectangle([px, py + ch - h, px + cw - 1, py + ch - 1], fill=fg)
            elif c != " ":
                d.text((px, py + 2), c, font=bold if st["bold"] else font, fill=fg)
    img.save(dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

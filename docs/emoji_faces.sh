#!/usr/bin/env bash
# A few-shot set we may publish samples of: 100 face emoji from Google's Noto Color Emoji, drawn at
# 128x128 on white. The README's pictures come from a model trained on it (docs/watching-a-run.md).
#
#   bash docs/emoji_faces.sh OUT_DIR          # writes OUT_DIR/000_1f600.png ... 100 PNGs
#
# The font comes from Debian's package fonts-noto-color-emoji (apt-get install fonts-noto-color-emoji)
# or from https://github.com/googlefonts/noto-emoji (fonts/NotoColorEmoji.ttf); set FONT to its path
# if it lies elsewhere. Licence: the font is under the SIL Open Font License 1.1, whose conditions
# "do not apply to any document created using the fonts"; the emoji images of the noto-emoji
# repository are under the Apache License 2.0. So the images drawn here, and what a model trained on
# them makes, may be redistributed.
set -euo pipefail
out=${1:?usage: bash docs/emoji_faces.sh OUT_DIR}
font=${FONT:-/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf}
if [ ! -f "$font" ]; then
  echo "emoji_faces.sh: no font at $font: apt-get install fonts-noto-color-emoji, or set FONT=path/to/NotoColorEmoji.ttf" >&2
  exit 2
fi
mkdir -p "$out"
python - "$font" "$out" <<'EOF'
import sys
from pathlib import Path
from PIL import Image, ImageDraw, ImageFont

font_path, out = sys.argv[1], Path(sys.argv[2])
font = ImageFont.truetype(font_path, 109)  # 109 px: the size of the colour bitmaps in this font

# The faces of Unicode's "Smileys & Emotion" group that are one round face (no lips, no bubbles, no
# dotted outline); 100 of them in Noto Color Emoji 2.042.
faces = (list(range(0x1F600, 0x1F638)) + list(range(0x1F641, 0x1F645)) + list(range(0x1F910, 0x1F916))
         + list(range(0x1F920, 0x1F926)) + list(range(0x1F927, 0x1F930)) + list(range(0x1F970, 0x1F977))
         + [0x1F978, 0x1F979, 0x1F97A, 0x1F9D0] + list(range(0x1FAE0, 0x1FAE5)) + [0x1FAE8, 0x263A, 0x2639])

written = 0
for code in faces:
    glyph = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(glyph).text((80, 80), chr(code), font=font, embedded_color=True, anchor="mm")
    box = glyph.getbbox()
    if box is None:  # an older font without this face
        continue
    glyph = glyph.crop(box)
    side = max(glyph.size) + 12  # a white margin of 6 px around the face
    canvas = Image.new("RGBA", (side, side), "white")
    canvas.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    canvas.convert("RGB").resize((128, 128), Image.LANCZOS).save(out / f"{written:03d}_{code:x}.png")
    written += 1
print(f"emoji_faces.sh: {written} faces at 128x128 in {out}")
EOF

"""Regenerate tea-brewing.pdf (needs reportlab, from the test extra): python build_pdf.py"""

from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

PAGES = [
    [
        "Brewing Tea: A Short Guide",
        "",
        "Water temperature matters more than any other step.",
        "Green tea is best brewed at about 80 degrees Celsius for two minutes.",
        "Black tea needs water close to boiling, 95 to 100 degrees, for three to five minutes.",
        "Oolong sits in between: 90 degrees, and the leaves can be steeped five or six times.",
    ],
    [
        "Storing Tea",
        "",
        "Keep tea in an airtight, opaque container away from heat, light and strong smells.",
        "Green tea keeps its fresh taste for about twelve months;",
        "black tea lasts two to three years.",
        "Pu-erh tea is the exception: it is aged on purpose and can improve for decades.",
    ],
    [
        "泡茶小贴士",
        "",
        "白茶冲泡的水温约为九十度，第一泡浸泡一分钟左右。",
        "茶具使用前先用热水温杯，可以让茶香更好地散发。",
    ],
]


def main() -> None:
    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    out = Path(__file__).with_name("tea-brewing.pdf")
    c = canvas.Canvas(str(out), pagesize=A4)
    c.setTitle("Brewing Tea: A Short Guide")
    for lines in PAGES:
        y = 800
        for i, line in enumerate(lines):
            c.setFont("STSong-Light", 16 if i == 0 else 11)
            c.drawString(60, y, line)
            y -= 24 if i == 0 else 18
        c.showPage()
    c.save()


if __name__ == "__main__":
    main()

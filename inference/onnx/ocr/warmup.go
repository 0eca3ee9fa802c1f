package ocr

import (
	"image"

	"golang.org/x/image/draw"
	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// warmupImage is a meter reading drawn in the built-in 7×13 bitmap font
// and scaled up four times: it runs both models on shapes like a real
// request's, so that the first request does not pay for the runtime's
// first allocations.
func warmupImage() *image.RGBA {
	small := image.NewRGBA(image.Rect(0, 0, 96, 24))
	draw.Draw(small, small.Bounds(), image.White, image.Point{}, draw.Src)
	d := font.Drawer{Dst: small, Src: image.Black, Face: basicfont.Face7x13, Dot: fixed.P(6, 17)}
	d.DrawString("04521.7 kWh")
	big := image.NewRGBA(image.Rect(0, 0, 4*96, 4*24))
	draw.BiLinear.Scale(big, big.Bounds(), small, small.Bounds(), draw.Src, nil)
	return big
}

//go:build race

package devicesim

// raceEnabled: the race detector slows pixel loops tenfold, so the image
// and audio tests check fewer frames under it.
const raceEnabled = true

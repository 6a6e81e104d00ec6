package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// progress shows how far a run of jobs has come: a one-line bar on a terminal (images done of
// total, rate, time left), kept below the lines the command and its logs print by erasing it
// before each line and drawing it again after. Without a terminal it draws nothing and only
// passes the lines through. It is safe for concurrent use.
type progress struct {
	mu     sync.Mutex
	stderr io.Writer // where the bar is drawn and log lines go
	tty    bool      // stderr is a terminal: draw the bar
	now    func() time.Time

	start       time.Time // when counting began
	total, done int
	listed      int  // images listed so far, before counting begins
	counting    bool // begin was called
	shown       bool // the bar is on the screen
	drawn       time.Time
}

// minRedraw bounds how often a finished image redraws the bar.
const minRedraw = 100 * time.Millisecond

func newProgress(stderr io.Writer, tty bool, now func() time.Time) *progress {
	return &progress{stderr: stderr, tty: tty, now: now}
}

// isTerminal says whether w is a character device, where a progress bar makes sense.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// listing shows how many images a listing has found so far.
func (p *progress) listing(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.listed = n
	p.draw(false)
}

// begin starts counting towards total images.
func (p *progress) begin(total int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total, p.counting, p.start = total, true, p.now()
	p.draw(true)
}

// step counts one image done and prints line (if not empty) to w, above the bar.
func (p *progress) step(w io.Writer, line string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	return p.print(w, line)
}

// println prints line to w above the bar, counting nothing.
func (p *progress) println(w io.Writer, line string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.print(w, line)
}

func (p *progress) print(w io.Writer, line string) error {
	var err error
	if line != "" {
		p.erase()
		_, err = io.WriteString(w, line+"\n")
	}
	p.draw(line != "")
	return err
}

// Write writes log lines to stderr above the bar; it is the log handler's writer.
func (p *progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.erase()
	n, err := p.stderr.Write(b)
	p.draw(true)
	return n, err
}

// tick redraws the bar, so that the rate and the time left move while jobs run.
func (p *progress) tick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.draw(true)
}

// end erases the bar for good.
func (p *progress) end() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.erase()
	p.tty = false
}

func (p *progress) erase() {
	if p.shown {
		io.WriteString(p.stderr, "\r\x1b[K")
		p.shown = false
	}
}

// draw shows the bar, at most every minRedraw unless forced (the bar was just erased, or
// must show a change at once).
func (p *progress) draw(force bool) {
	if !p.tty {
		return
	}
	now := p.now()
	if !force && p.shown && now.Sub(p.drawn) < minRedraw {
		return
	}
	line := fmt.Sprintf("listing images: %d", p.listed)
	if p.counting {
		line = renderBar(p.done, p.total, now.Sub(p.start))
	}
	io.WriteString(p.stderr, "\r"+line+"\x1b[K")
	p.shown, p.drawn = true, now
}

// barWidth is the number of cells of the bar itself.
const barWidth = 24

// renderBar is the progress line after done of total images in elapsed: the bar, the counts,
// the rate so far and the time left at that rate.
func renderBar(done, total int, elapsed time.Duration) string {
	filled, pct := barWidth, 100
	if total > 0 {
		filled, pct = min(done*barWidth/total, barWidth), min(done*100/total, 100)
	}
	rate, eta := "-", "-"
	if done > 0 && elapsed > 0 {
		r := float64(done) / elapsed.Seconds()
		rate = fmt.Sprintf("%.1f", r)
		eta = (time.Duration(float64(max(total-done, 0)) / r * float64(time.Second))).Round(time.Second).String()
	}
	return fmt.Sprintf("[%s%s] %d/%d %3d%%  %s images/s  ETA %s",
		strings.Repeat("#", filled), strings.Repeat("-", barWidth-filled), done, total, pct, rate, eta)
}

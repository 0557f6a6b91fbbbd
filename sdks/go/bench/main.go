// Overhead per metered call: how long Meter (and a Metered call) holds up the caller, p50 and
// p99, with batches being delivered in the background; in memory and with the spool.
//
//	go run ./bench [-calls 200000] [-endpoint URL -api-key KEY]
//
// Without -endpoint the events go to a local HTTP sink that answers 202 at once, so the figures
// are the SDK's own cost, not Aforo's. Not a test: figures, no thresholds.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"sort"
	"time"

	"aforo-go"
)

type result struct {
	Mode      string  `json:"mode"`
	P50       float64 `json:"p50_us"`
	P99       float64 `json:"p99_us"`
	P999      float64 `json:"p999_us"`
	PerSecond float64 `json:"calls_per_s"`
	Delivered int     `json:"delivered"`
	Dropped   int     `json:"dropped"`
	Flushed   bool    `json:"flushed"`
}

func main() {
	calls := flag.Int("calls", 200000, "metered calls per mode")
	endpoint := flag.String("endpoint", "", "an Aforo (default: a local sink answering 202)")
	apiKey := flag.String("api-key", "afk_bench_bench", "")
	flag.Parse()
	if *endpoint == "" {
		sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusAccepted)
		}))
		defer sink.Close()
		*endpoint = sink.URL
	}
	ctx := aforo.WithCustomer(context.Background(), "cust-1")
	meter := func(c *aforo.Client, i int) {
		c.Meter(ctx, "api.call", "cust-1", aforo.Data{"route": "/v1/search", "status": 200, "n": i})
	}
	metered := func(c *aforo.Client, i int) {
		c.Metered(ctx, "report.run", func(context.Context) (aforo.Data, error) { return nil, nil })
	}
	var rows []result
	for _, mode := range []struct {
		name  string
		spool bool
		fn    func(*aforo.Client, int)
	}{{"Meter, memory", false, meter}, {"Meter, spool", true, meter}, {"Metered call, memory", false, metered}} {
		o := aforo.Options{Endpoint: *endpoint, APIKey: *apiKey, MaxQueue: 10000000, SpoolMaxBytes: 8 << 30,
			Logger: log.New(io.Discard, "", 0)}
		if mode.spool {
			dir, _ := os.MkdirTemp("", "aforo-bench-")
			defer os.RemoveAll(dir)
			o.SpoolDir = dir
		}
		c, err := aforo.New(o)
		if err != nil {
			log.Fatal(err)
		}
		for i := 0; i < *calls/10; i++ { // warm up
			mode.fn(c, i)
		}
		samples := make([]time.Duration, *calls)
		started := time.Now()
		for i := range samples {
			t := time.Now()
			mode.fn(c, i)
			samples[i] = time.Since(t)
		}
		elapsed := time.Since(started)
		flushed := c.Flush(2 * time.Minute)
		c.Close(10 * time.Second)
		sort.Slice(samples, func(a, b int) bool { return samples[a] < samples[b] })
		q := func(p float64) float64 { return float64(samples[int(p*float64(len(samples)-1))].Nanoseconds()) / 1000 }
		s := c.Stats()
		r := result{mode.name, q(0.5), q(0.99), q(0.999), float64(*calls) / elapsed.Seconds(), s.Delivered, s.Dropped, flushed}
		rows = append(rows, r)
		fmt.Printf("%-24s p50 %7.2f us  p99 %7.2f us  p99.9 %7.2f us  %10.0f calls/s  delivered %d  dropped %d\n",
			r.Mode, r.P50, r.P99, r.P999, r.PerSecond, r.Delivered, r.Dropped)
	}
	out, _ := json.Marshal(map[string]any{"sdk": "go", "go": runtime.Version(), "calls": *calls, "results": rows})
	fmt.Println(string(out))
}

package aforo

import (
	"testing"
	"time"
)

func TestBackoffIsJitteredExponentialAndHonoursRetryAfter(t *testing.T) {
	one, half := func() float64 { return 1 }, func() float64 { return 0.5 }
	ms := time.Millisecond
	for _, c := range []struct{ got, want time.Duration }{
		{backoff(0, 200*ms, 30*time.Second, -1, one), 200 * ms},
		{backoff(3, 200*ms, 30*time.Second, -1, half), 800 * ms},
		{backoff(20, 200*ms, 30*time.Second, -1, one), 30 * time.Second},
		{backoff(0, 200*ms, 30*time.Second, 7*time.Second, one), 7 * time.Second},
		{retryAfter("3"), 3 * time.Second},
		{retryAfter("soon"), -1},
		{retryAfter("Wed, 21 Oct 2015 07:28:00 GMT"), 0},
	} {
		if c.got != c.want {
			t.Errorf("got %v, want %v", c.got, c.want)
		}
	}
}

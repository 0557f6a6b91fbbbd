package aforo

import (
	"context"
	"time"
)

// Metered runs fn and meters the call as one eventType event: outcome ("ok" or "error"), the
// error's text, duration_ms, and whatever Data fn returns (a quantity, say). The customer is
// the context's (WithCustomer, or the middleware's). fn's error is returned as is; metering
// never fails the call (a call with no customer is counted in Stats().Unattributed).
func (c *Client) Metered(ctx context.Context, eventType string, fn func(context.Context) (Data, error)) error {
	started := time.Now()
	data, err := fn(ctx)
	event := Data{}
	for k, v := range data {
		event[k] = v
	}
	event["outcome"] = "ok"
	if err != nil {
		event["outcome"], event["error"] = "error", err.Error()
	}
	event["duration_ms"] = float64(time.Since(started).Microseconds()) / 1000
	c.meterQuietly(ctx, eventType, "", event, eventType)
	return err
}

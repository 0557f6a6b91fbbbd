package io.aforo.sdk;

import java.util.List;

/** Events that will not reach Aforo from this process. Reason: "rejected" (Aforo refused them;
 * resending cannot help), "dropped" (retries exhausted, or closed without a spool) or "overflow"
 * (the queue was full). */
public record DeliveryError(String reason, List<byte[]> lines, String detail, int status) {
    @Override
    public String toString() {
        return lines.size() + " events " + reason + ": " + detail;
    }
}

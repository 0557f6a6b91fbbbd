package io.aforo.sdk;

/** The client's counters. unattributed: calls metered by the filter or metered() with no customer. */
public record Stats(long queued, long delivered, long requests, long retries, long rejected, long dropped,
                    long unattributed) {}

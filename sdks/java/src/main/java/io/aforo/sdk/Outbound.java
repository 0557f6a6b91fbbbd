package io.aforo.sdk;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.OverlappingFileLockException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ThreadLocalRandom;
import java.util.function.DoubleSupplier;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The queue (in memory, or a spool on disk), batching, what an answer from Aforo means and the
 * backoff between attempts. Answers: 2xx delivered; 408/425/429/5xx and network errors retried
 * with exponential backoff and full jitter, waiting at least Retry-After; 400/413 for a batch of
 * several events split it in halves (one bad event cannot sink its neighbours); any other 4xx, or
 * 400/413 for one event, is a rejection: reported to onError, kept in the spool's
 * rejected-*.ndjson when there is a spool, never retried. Not thread-safe: the client locks.
 */
final class Outbound {
    static final Logger LOG = Logger.getLogger("io.aforo.sdk");
    static final Set<Integer> RETRYABLE = Set.of(408, 425, 429, 500, 502, 503, 504);
    static final int MAX_BATCH_EVENTS = 1000;
    static final int MAX_REQUEST_BYTES = 1 << 20;

    interface Outbox {
        boolean put(byte[] line, long nowNanos);
        int length();
        boolean fullBatch();
        long firstAt();
        Taken take();
        void done(Object token);
        List<byte[]> drain();
        void close();
    }

    record Taken(List<byte[]> lines, Object token) {}

    static List<byte[]> take(Deque<byte[]> queue, int limit) {
        List<byte[]> lines = new ArrayList<>();
        int size = 2;
        while (!queue.isEmpty() && lines.size() < limit
                && (lines.isEmpty() || size + queue.peekFirst().length + 1 <= MAX_REQUEST_BYTES)) {
            byte[] line = queue.pollFirst();
            lines.add(line);
            size += line.length + 1;
        }
        return lines;
    }

    static final class MemoryOutbox implements Outbox {
        private final Deque<byte[]> queue = new ArrayDeque<>();
        private final int max;
        private final int batch;
        private long first;

        MemoryOutbox(int max, int batch) {
            this.max = max;
            this.batch = batch;
        }

        public boolean put(byte[] line, long now) {
            if (queue.size() >= max) return false;
            if (queue.isEmpty()) first = now;
            queue.addLast(line);
            return true;
        }

        public int length() { return queue.size(); }
        public boolean fullBatch() { return queue.size() >= batch; }
        public long firstAt() { return first; }

        public Taken take() {
            List<byte[]> lines = Outbound.take(queue, batch);
            return lines.isEmpty() ? null : new Taken(lines, null);
        }

        public void done(Object token) {}

        public List<byte[]> drain() {
            List<byte[]> lines = new ArrayList<>(queue);
            queue.clear();
            return lines;
        }

        public void close() {}
    }

    /**
     * The queue on disk: each event is appended to the head segment before meter() returns, so it
     * survives the process exiting or being killed (not a machine crash: there is no fsync per
     * event). A segment holds one batch and is deleted once Aforo acknowledged it; segments left by
     * an earlier run are sent first (a duplicate at worst, never a second charge).
     */
    static final class SpoolOutbox implements Outbox {
        private final Path dir;
        private final FileChannel lockChannel;
        private final FileLock lock;
        private final long max;
        private final int batch;
        private final Deque<Path> sealed = new ArrayDeque<>();
        private long bytes;
        private long seq;
        private FileChannel head;
        private Path headPath;
        private int headCount;
        private int headBytes;
        private long first;

        SpoolOutbox(Path dir, long max, int batch) {
            this.dir = dir;
            this.max = max;
            this.batch = batch;
            try {
                Files.createDirectories(dir);
                lockChannel = FileChannel.open(dir.resolve(".lock"), StandardOpenOption.CREATE, StandardOpenOption.WRITE);
                FileLock taken;
                try {
                    taken = lockChannel.tryLock();
                } catch (OverlappingFileLockException e) {
                    taken = null;
                }
                if (taken == null) {
                    lockChannel.close();
                    throw new SpoolLockedException("spool directory " + dir + " is used by another process or "
                            + "client; give each its own spoolDir");
                }
                lock = taken;
                List<Path> found = new ArrayList<>();
                try (DirectoryStream<Path> ds = Files.newDirectoryStream(dir, "seg-*.ndjson")) {
                    ds.forEach(found::add);
                }
                found.sort(null);
                for (Path p : found) {
                    sealed.add(p);
                    bytes += Files.size(p);
                    String name = p.getFileName().toString();
                    seq = Math.max(seq, Long.parseLong(name.substring(4, name.length() - 7)));
                }
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }

        private Path file(String prefix) {
            seq++;
            return dir.resolve(String.format("%s-%020d.ndjson", prefix, seq));
        }

        public boolean put(byte[] line, long now) {
            int size = line.length + 1;
            if (bytes + size > max) return false;
            if (headCount > 0 && (headCount >= batch || headBytes + size + 2 > MAX_REQUEST_BYTES)) seal();
            try {
                if (head == null) {
                    headPath = file("seg");
                    head = FileChannel.open(headPath, StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                            StandardOpenOption.APPEND);
                    first = now;
                }
                ByteBuffer buf = ByteBuffer.allocate(size).put(line).put((byte) '\n').flip();
                while (buf.hasRemaining()) head.write(buf);
            } catch (IOException e) {
                LOG.log(Level.SEVERE, "spool write failed", e);
                return false;
            }
            headCount++;
            headBytes += size;
            bytes += size;
            return true;
        }

        public int length() { return headCount + sealed.size(); }
        public boolean fullBatch() { return !sealed.isEmpty() || headCount >= batch; }
        public long firstAt() { return first; }

        private void seal() {
            if (head == null) return;
            try {
                head.close();
            } catch (IOException ignored) {
                // the bytes are written; closing cannot lose them
            }
            sealed.addLast(headPath);
            head = null;
            headPath = null;
            headCount = 0;
            headBytes = 0;
        }

        public Taken take() {
            if (sealed.isEmpty()) seal();
            if (sealed.isEmpty()) return null;
            Path path = sealed.peekFirst();
            byte[] raw;
            try {
                raw = Files.readAllBytes(path);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            // A crash can leave a last line half written: only newline-terminated lines are events.
            List<byte[]> lines = new ArrayList<>();
            int start = 0;
            for (int i = 0; i < raw.length; i++) {
                if (raw[i] == '\n') {
                    if (i > start) lines.add(java.util.Arrays.copyOfRange(raw, start, i));
                    start = i + 1;
                }
            }
            return new Taken(lines, path);
        }

        public void done(Object token) {
            Path path = sealed.pollFirst();
            try {
                bytes -= Files.size(path);
                Files.deleteIfExists(path);
            } catch (IOException e) {
                LOG.log(Level.WARNING, "could not delete " + path, e);
            }
        }

        Path reject(List<byte[]> lines) {
            Path path = file("rejected");
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            for (byte[] line : lines) {
                out.writeBytes(line);
                out.write('\n');
            }
            try {
                Files.write(path, out.toByteArray());
            } catch (IOException e) {
                LOG.log(Level.SEVERE, "could not keep rejected events in " + path, e);
            }
            return path;
        }

        public List<byte[]> drain() { return List.of(); } // everything waiting is on disk already

        public void close() {
            seal();
            try {
                lock.release();
                lockChannel.close();
            } catch (IOException ignored) {
                // the process is letting go of the directory anyway
            }
        }
    }

    static final class Work {
        final Object token;
        final Deque<List<byte[]>> parts = new ArrayDeque<>();
        int attempt;
        long notBefore;

        Work(Object token, List<byte[]> lines) {
            this.token = token;
            parts.add(lines);
        }

        List<byte[]> all() {
            List<byte[]> lines = new ArrayList<>();
            parts.forEach(lines::addAll);
            return lines;
        }
    }

    final Aforo.Options o;
    final Outbox box;
    final SpoolOutbox spool;
    DoubleSupplier rnd = () -> ThreadLocalRandom.current().nextDouble();
    Work work;
    long queued, delivered, requests, retries, rejected, dropped, unattributed;

    Outbound(Aforo.Options o) {
        this.o = o;
        spool = o.spoolDir == null ? null : new SpoolOutbox(o.spoolDir, o.spoolMaxBytes, o.batchSize);
        box = spool != null ? spool : new MemoryOutbox(o.maxQueue, o.batchSize);
    }

    Stats stats() {
        return new Stats(queued, delivered, requests, retries, rejected, dropped, unattributed);
    }

    boolean put(byte[] line, long now) {
        if (!box.put(line, now)) return false;
        queued++;
        return true;
    }

    boolean idle() { return work == null && box.length() == 0; }

    private boolean ready(long now, boolean force) {
        return box.length() > 0 && (force || box.fullBatch() || now - box.firstAt() >= o.lingerNanos);
    }

    /** The events to send now, if any (force: flushing, no lingering). */
    List<byte[]> nextRequest(long now, boolean force) {
        if (work == null && ready(now, force)) {
            Taken taken = box.take();
            if (taken != null && !taken.lines().isEmpty()) work = new Work(taken.token(), taken.lines());
            else if (taken != null) box.done(taken.token()); // an empty segment
        }
        return work != null && now >= work.notBefore ? work.parts.peekFirst() : null;
    }

    /** Nanoseconds until nextRequest may have something; -1: until an event is put. */
    long waitNanos(long now) {
        if (work != null) return Math.max(0, work.notBefore - now);
        if (box.length() > 0) return Math.max(0, box.firstAt() + o.lingerNanos - now);
        return -1;
    }

    List<DeliveryError> answered(int status, String retryAfter, String detail, long now) {
        requests++;
        List<byte[]> lines = work.parts.peekFirst();
        if (status >= 200 && status < 300) {
            delivered += lines.size();
            return partDone();
        }
        if (RETRYABLE.contains(status)) return retry("HTTP " + status + ": " + detail, retryAfterNanos(retryAfter), now);
        if ((status == 400 || status == 413) && lines.size() > 1) {
            int half = lines.size() / 2;
            work.parts.pollFirst();
            work.parts.addFirst(new ArrayList<>(lines.subList(half, lines.size())));
            work.parts.addFirst(new ArrayList<>(lines.subList(0, half)));
            return List.of();
        }
        rejected += lines.size();
        String where = spool != null ? " (kept in " + spool.reject(lines) + ")" : "";
        LOG.severe("Aforo refused " + lines.size() + " events with HTTP " + status + where + ": " + detail);
        List<DeliveryError> errors = new ArrayList<>(List.of(new DeliveryError("rejected", lines, detail + where, status)));
        errors.addAll(partDone());
        return errors;
    }

    /** The request got no answer (connection refused, reset, timeout). */
    List<DeliveryError> failed(Exception e, long now) {
        requests++;
        return retry(e.getClass().getSimpleName() + ": " + e.getMessage(), -1, now);
    }

    private List<DeliveryError> partDone() {
        work.parts.pollFirst();
        work.attempt = 0;
        if (work.parts.isEmpty()) {
            box.done(work.token);
            work = null;
        }
        return List.of();
    }

    private List<DeliveryError> retry(String why, long retryAfter, long now) {
        if (work.attempt >= o.maxRetries && spool == null) {
            List<byte[]> lines = work.all();
            dropped += lines.size();
            work = null;
            LOG.severe("dropped " + lines.size() + " events after " + o.maxRetries + " retries: " + why);
            return List.of(new DeliveryError("dropped", lines, "after " + o.maxRetries + " retries: " + why, 0));
        }
        // With a spool nothing is given up: the batch stays on disk and is retried at the cap.
        long delay = backoffNanos(work.attempt, o.backoffBaseNanos, o.backoffMaxNanos, retryAfter, rnd);
        work.attempt++;
        work.notBefore = now + delay;
        retries++;
        LOG.warning("Aforo did not take " + work.parts.peekFirst().size() + " events (" + why + "); retrying in "
                + delay / 1_000_000 + " ms");
        return List.of();
    }

    /** On close, past the flush deadline: what is lost (nothing, with a spool). */
    List<DeliveryError> abandon() {
        if (spool != null) {
            spool.close();
            return List.of();
        }
        List<byte[]> lines = work == null ? new ArrayList<>() : work.all();
        lines.addAll(box.drain());
        work = null;
        if (lines.isEmpty()) return List.of();
        dropped += lines.size();
        LOG.severe("closing with " + lines.size() + " events undelivered and no spoolDir: they are lost");
        return List.of(new DeliveryError("dropped", lines, "the client closed before Aforo took them", 0));
    }

    List<DeliveryError> overflow(byte[] line) {
        dropped++;
        String where = spool != null ? "spool" : "queue";
        LOG.severe("Aforo " + where + " full: dropped an event (see overflow / maxQueue / spoolMaxBytes)");
        return List.of(new DeliveryError("overflow", List.of(line), "the " + where + " is full", 0));
    }

    /** Full jitter: uniform in [0, min(cap, base·2^attempt)], never sooner than Retry-After. */
    static long backoffNanos(int attempt, long base, long cap, long retryAfter, DoubleSupplier rnd) {
        double ceiling = Math.min((double) cap, base * Math.pow(2, Math.min(attempt, 32)));
        long delay = (long) (rnd.getAsDouble() * ceiling);
        return retryAfter >= 0 ? Math.max(delay, retryAfter) : delay;
    }

    /** Retry-After in nanoseconds: delta-seconds or an HTTP date; -1 when absent or unreadable. */
    static long retryAfterNanos(String value) {
        if (value == null || value.isBlank()) return -1;
        try {
            double seconds = Double.parseDouble(value.trim());
            return seconds < 0 ? -1 : (long) (seconds * 1e9);
        } catch (NumberFormatException notSeconds) {
            try {
                ZonedDateTime at = ZonedDateTime.parse(value.trim(), DateTimeFormatter.RFC_1123_DATE_TIME);
                return Math.max(0, (at.toInstant().toEpochMilli() - System.currentTimeMillis()) * 1_000_000);
            } catch (RuntimeException notADate) {
                return -1;
            }
        }
    }
}

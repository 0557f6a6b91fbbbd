package io.aforo.sdk;

/** Another process (or client) uses the spool directory: give each its own. */
public class SpoolLockedException extends IllegalStateException {
    private static final long serialVersionUID = 1L;

    public SpoolLockedException(String message) {
        super(message);
    }
}

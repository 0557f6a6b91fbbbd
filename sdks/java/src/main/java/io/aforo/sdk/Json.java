package io.aforo.sdk;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.Collection;
import java.util.Map;

/** A small JSON encoder (no third-party runtime dependencies). BigDecimal is written as an exact
 * string (Aforo's metrics read numbers from strings); NaN and infinities are refused. */
final class Json {
    private Json() {}

    static String encode(Object value) {
        StringBuilder out = new StringBuilder(256);
        write(out, value, "$");
        return out.toString();
    }

    private static void write(StringBuilder out, Object v, String where) {
        if (v == null) {
            out.append("null");
        } else if (v instanceof String s) {
            string(out, s);
        } else if (v instanceof Boolean b) {
            out.append(b);
        } else if (v instanceof BigDecimal d) {
            string(out, d.toPlainString());
        } else if (v instanceof Integer || v instanceof Long || v instanceof Short || v instanceof Byte
                || v instanceof BigInteger) {
            out.append(v);
        } else if (v instanceof Number n) {
            double d = n.doubleValue();
            if (Double.isNaN(d) || Double.isInfinite(d)) {
                throw new IllegalArgumentException(where + ": " + d + " is not a number Aforo can meter");
            }
            out.append(n);
        } else if (v instanceof Map<?, ?> m) {
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : m.entrySet()) {
                if (!first) out.append(',');
                first = false;
                string(out, String.valueOf(e.getKey()));
                out.append(':');
                write(out, e.getValue(), where + "." + e.getKey());
            }
            out.append('}');
        } else if (v instanceof Collection<?> c) {
            out.append('[');
            int i = 0;
            for (Object item : c) {
                if (i > 0) out.append(',');
                write(out, item, where + "[" + i++ + "]");
            }
            out.append(']');
        } else {
            throw new IllegalArgumentException(where + ": " + v.getClass().getName() + " is not JSON");
        }
    }

    private static void string(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
                    else out.append(c);
                }
            }
        }
        out.append('"');
    }
}

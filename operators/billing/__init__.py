"""The bill run's ten stages, each a pure function in its own module (see flows/billing.py for
what each reads and where its output is recorded)."""

STAGES = ("quota_check", "rollover", "aggregate", "allowance", "rate", "commit", "discount", "tax",
          "route", "settle")

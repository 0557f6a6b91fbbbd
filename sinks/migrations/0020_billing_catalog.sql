-- Billing terms in the catalog (`aforo catalog apply`): what the bill run reads besides the
-- plans' charges (whose `included` units and `rollover` live in the charge itself).

-- Hard quotas: `block` caps billable usage at the limit, `bill` charges the overage.
ALTER TABLE quotas ADD COLUMN overage text NOT NULL DEFAULT 'bill' CHECK (overage IN ('bill', 'block'));
-- A minimum commitment per period: a true-up line when usage falls short.
ALTER TABLE subscriptions ADD COLUMN minimum numeric CHECK (minimum >= 0);

-- Tax rates, exclusive. zero_rated and reverse_charge rates charge nothing but say why.
CREATE TABLE tax_rates (
    tenant   text    NOT NULL REFERENCES tenants,
    id       text    NOT NULL,
    name     text    NOT NULL,
    percent  numeric NOT NULL CHECK (percent >= 0),
    kind     text    NOT NULL DEFAULT 'standard' CHECK (kind IN ('standard', 'zero_rated', 'reverse_charge')),
    PRIMARY KEY (tenant, id)
);
ALTER TABLE customers ADD COLUMN tax_rate text;
ALTER TABLE customers ADD FOREIGN KEY (tenant, tax_rate) REFERENCES tax_rates;

-- Coupons: a percentage or a fixed amount, for `periods` periods (NULL: forever), on named
-- charges (metrics) or, with none named, the whole invoice.
CREATE TABLE coupons (
    tenant       text    NOT NULL REFERENCES tenants,
    code         text    NOT NULL,
    name         text    NOT NULL DEFAULT '',
    percent_off  numeric CHECK (percent_off > 0 AND percent_off <= 100),
    amount_off   numeric CHECK (amount_off > 0),
    periods      integer CHECK (periods >= 1),
    charges      jsonb   NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant, code),
    CHECK ((percent_off IS NULL) <> (amount_off IS NULL))
);
-- A coupon applied to a customer from a period on.
CREATE TABLE coupon_redemptions (
    tenant       text NOT NULL,
    customer     text NOT NULL,
    coupon       text NOT NULL,
    from_period  text NOT NULL,
    PRIMARY KEY (tenant, customer, coupon),
    FOREIGN KEY (tenant, customer) REFERENCES customers,
    FOREIGN KEY (tenant, coupon) REFERENCES coupons
);

-- Prepaid credits: units of a metric a customer bought ahead, usable from a period on. A grant
-- is a financial record: appended (by the catalog, or by `aforo credit grant`), never changed.
-- What invoices draw from them is in credit_draws.
CREATE TABLE credit_grants (
    tenant       text        NOT NULL,
    id           text        NOT NULL,
    customer     text        NOT NULL,
    metric       text        NOT NULL,
    units        numeric     NOT NULL CHECK (units > 0),
    from_period  text        NOT NULL,
    source       text        NOT NULL CHECK (source IN ('catalog', 'command')),
    granted_by   text        NOT NULL,
    note         text,
    granted_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id),
    FOREIGN KEY (tenant, customer) REFERENCES customers,
    FOREIGN KEY (tenant, metric) REFERENCES metrics
);

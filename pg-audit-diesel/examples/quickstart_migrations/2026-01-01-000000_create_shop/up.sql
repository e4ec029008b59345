-- The application's own tables, as `diesel migration generate` would hold them.
CREATE TABLE users (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL,
    password_hash text NOT NULL
);

CREATE TABLE products (
    id serial PRIMARY KEY,
    title text NOT NULL,
    price_cents integer NOT NULL,
    updated_at timestamp NOT NULL DEFAULT now()
);

# meterpki: `make demo` runs the demo, `make test` runs the tests. Both install what a fresh
# Debian machine lacks (softhsm2, opensc, openssl, postgresql) first.
.PHONY: deps demo demo-cluster test lint bench-hsm bench-issue bench-crl fuzz

CARGO ?= cargo

deps:
	./scripts/install-deps.sh

demo: deps
	./scripts/demo.sh

# The shared store: PostgreSQL with a synchronous standby, two servers, the primary killed and
# the standby promoted (docs/deployment.md).
demo-cluster: deps
	./scripts/demo-cluster.sh

test: deps
	$(CARGO) build -p meterpki-pkcs11-faults   # the fault-injecting PKCS#11 module the fault tests load
	./scripts/test-postgres.sh start           # a throwaway PostgreSQL cluster for the shared-store tests
	@status=0; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast || status=$$?; \
	else \
	  $(CARGO) test --workspace --no-fail-fast || status=$$?; \
	fi; \
	./scripts/test-postgres.sh stop; exit $$status

# Every cargo-fuzz target for FUZZ_SECONDS each (default 60); see scripts/fuzz.sh.
fuzz: deps
	scripts/fuzz.sh

# rustfmt, and clippy with the workspace's lints (Cargo.toml) and the lists that keep cli and
# issuance-api thin (cli/clippy.toml, issuance-api/clippy.toml). CI runs it before the tests.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Raw SoftHSM signing rates (bare cryptoki vs hsm-bridge, 1 and 2 sessions) on a demo home.
bench-hsm: deps
	@[ -f demo/home/meterpki.toml ] || ./scripts/demo.sh >/dev/null
	$(CARGO) run --release -q -p meterpki-cli -- --home demo/home hsm bench --seconds 5

# 100,000 meter certificates through the `issue --batch` path vs the raw signing rate.
bench-issue: deps
	@[ -f demo/home/meterpki.toml ] || ./scripts/demo.sh >/dev/null
	$(CARGO) run --release -q -p meterpki-bench -- --home demo/home issue --count 100000

# 1,000,000 certificate records, 100,000 revoked, every CRL shard rebuilt and signed.
bench-crl: deps
	@[ -f demo/home/meterpki.toml ] || ./scripts/demo.sh >/dev/null
	$(CARGO) run --release -q -p meterpki-bench -- --home demo/home crl --certs 1000000 --revoke 100000

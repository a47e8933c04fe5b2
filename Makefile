# Every target runs on the project's own Node (node_modules/.bin comes first on PATH).
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)
# Contract checked for breaking changes against the last contract that landed: clients may use
# every field of it, while names added since are still free to change. `.ci/contract-baseline`
# holds that commit; `make contract-baseline` moves it to HEAD once HEAD has landed.
CONTRACT_BASELINE := $(shell cat .ci/contract-baseline 2>/dev/null)
BREAKING_AGAINST ?= .git\#ref=$(CONTRACT_BASELINE)

.PHONY: install generate lint typecheck check-gen build breaking contract-baseline check test run bench migrate

# A fresh clone installs on first use: `make run` and `make test` work right after `git clone`.
node_modules: package-lock.json
	npm ci --no-audit --no-fund
	@touch node_modules

install: node_modules

generate: node_modules
	buf generate

lint: node_modules
	buf lint
	biome check .

typecheck: node_modules
	tsc --noEmit -p .

# gen/ must be exactly what `buf generate` makes from proto/.
check-gen: node_modules
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	buf generate --output "$$tmp" && \
	if ! diff -r "$$tmp/gen" gen >/dev/null; then \
	  diff -r "$$tmp/gen" gen | head -20; \
	  echo "gen/ is stale: run 'make generate' and commit the result" >&2; exit 1; \
	fi

breaking: node_modules
	@git cat-file -e '$(CONTRACT_BASELINE)^{commit}' || { echo "contract baseline '$(CONTRACT_BASELINE)' (.ci/contract-baseline) is not in this clone's history" >&2; exit 1; }
	buf breaking --against '$(BREAKING_AGAINST)'

# Run once the submission at HEAD has landed: its contract becomes the one clients may rely on.
contract-baseline:
	git rev-parse HEAD > .ci/contract-baseline

# The client package compiles to JavaScript (consumers cannot type-strip inside node_modules).
build: node_modules
	npm run -s build

check: lint typecheck check-gen build

test: node_modules
	npm test

# `npm start` runs the same command; calling node directly spares npm's own start (~0.4 s of a
# restart). MALLOC_TRIM_THRESHOLD_ and the small young generation keep an idle server's RSS low.
run: node_modules
	MALLOC_TRIM_THRESHOLD_=131072 exec node --max-semi-space-size=4 src/main.ts

migrate: node_modules
	npm run migrate

bench: node_modules
	npm run bench

# libpdiff: the two commands of the README.
#   make demo   set everything up, then run the mnist-mlp3 demo into demo-out/
#   make test   set everything up, then run the whole test suite
#   make install PREFIX=/usr/local   lib/libpdiff.so, include/pdiff.h + pdiff.hpp, lib/pkgconfig/pdiff.pc
SHELL := /bin/bash
PREFIX ?= /usr/local
DESTDIR ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)

.PHONY: setup build lib demo test fuzz install uninstall clean

setup:
	bash scripts/setup.sh

build: setup
	cargo build --release

demo: build
	./target/release/pdiff demo --task mnist-mlp3 --out demo-out

test: setup
	bash scripts/test.sh

fuzz: setup
	bash scripts/fuzz.sh 600

# The shared library alone (what install copies).
lib:
	cargo build --release --lib

# Builds the library first when cargo is on PATH (as a plain user); under sudo without cargo,
# installs the library built before (`make lib`). libpdiff.so keeps its RUNPATH to the project
# venv's libtorch: the venv must stay where it is.
install:
	@if command -v cargo >/dev/null 2>&1; then cargo build --release --lib; \
	elif [ ! -f target/release/libpdiff.so ]; then \
	  echo "target/release/libpdiff.so is missing: run 'make lib' first" >&2; exit 1; fi
	install -d "$(DESTDIR)$(PREFIX)/lib/pkgconfig" "$(DESTDIR)$(PREFIX)/include"
	install -m 755 target/release/libpdiff.so "$(DESTDIR)$(PREFIX)/lib/libpdiff.so"
	install -m 644 include/pdiff.h bindings/cpp/pdiff.hpp "$(DESTDIR)$(PREFIX)/include/"
	torch_lib=$$(readelf -d target/release/libpdiff.so 2>/dev/null | sed -n 's/.*R\(UN\)\{0,1\}PATH.*\[\(.*\)\]/\2/p' | head -n1); \
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' -e "s|@TORCH_LIB@|$${torch_lib:-unknown}|g" \
	    pdiff.pc.in > "$(DESTDIR)$(PREFIX)/lib/pkgconfig/pdiff.pc"
	@echo "installed libpdiff $(VERSION) into $(DESTDIR)$(PREFIX)"

uninstall:
	rm -f "$(DESTDIR)$(PREFIX)/lib/libpdiff.so" "$(DESTDIR)$(PREFIX)/include/pdiff.h" \
	    "$(DESTDIR)$(PREFIX)/include/pdiff.hpp" "$(DESTDIR)$(PREFIX)/lib/pkgconfig/pdiff.pc"

clean:
	rm -rf target demo-out

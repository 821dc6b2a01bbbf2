# libpdiff: the two commands of the README.
#   make demo   set everything up, then run the mnist-mlp3 demo into demo-out/
#   make test   set everything up, then run the whole test suite
SHELL := /bin/bash
PREFIX ?= /usr/local

.PHONY: setup build demo test fuzz install clean

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

clean:
	rm -rf target demo-out

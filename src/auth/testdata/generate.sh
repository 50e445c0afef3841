#!/bin/sh
# Regenerates the test keys used by the unit tests in src/auth/. They are
# test-only keys, made once and checked in so the tests need no key
# generation at run time (2048-bit RSA takes seconds in a debug build).
#
#   sh src/auth/testdata/generate.sh
set -eu
cd "$(dirname "$0")"

# RS256: two RSA key pairs, the second one for key-rotation tests.
for name in rsa rsa2; do
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$name.key.pem"
    openssl pkey -in "$name.key.pem" -pubout -out "$name.pub.pem"
done

# ES256: a P-256 key pair.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.key.pem
openssl pkey -in ec.key.pem -pubout -out ec.pub.pem

# A P-384 public key: Herald must refuse it (ES384 is not supported).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out p384.key.pem
openssl pkey -in p384.key.pem -pubout -out p384.pub.pem
rm p384.key.pem

# A 1024-bit RSA public key: Herald must refuse it (too short).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out rsa1024.key.pem
openssl pkey -in rsa1024.key.pem -pubout -out rsa1024.pub.pem
rm rsa1024.key.pem

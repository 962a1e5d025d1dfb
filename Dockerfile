# histor image: the static (musl) `histor` and `kubectl-blame` binaries, CA certificates, nothing else.
#
# Base images cannot be pulled on the build machines, so the image starts FROM scratch around
# binaries built beforehand. scripts/build-image.sh builds them and stages the context:
#   histor, kubectl-blame      target/x86_64-unknown-linux-musl/release/{histor,kubectl-blame}
#   ca-certificates.crt        the build host's /etc/ssl/certs/ca-certificates.crt (SMTP, Slack, webhooks)
# No shell, no package manager; runs as 65532:65532 (the Helm chart also enforces it).
FROM scratch

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="histor" \
      org.opencontainers.image.description="git blame and a flight recorder for Kubernetes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/histor-dev/histor"

COPY --chown=0:0 --chmod=0444 ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chown=0:0 --chmod=0555 histor /histor
COPY --chown=0:0 --chmod=0555 kubectl-blame /kubectl-blame

ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# The operator's data and certificate directories are volumes in Kubernetes; WORKDIR needs no write.
WORKDIR /
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/histor"]
CMD ["operator"]

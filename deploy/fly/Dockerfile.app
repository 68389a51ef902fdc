# What an app's Dockerfile adds for the wrapper shape (fly.toml here): the
# pgguard binary, static so it runs on any base image, and its config.
# pgguard's own image is built from the repository's Dockerfile and pushed
# where the app's build can pull it (README.md beside this file).
FROM registry.fly.io/my-app:pgguard-0.1.0 AS pgguard

FROM python:3.12-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .

# pgguard beside the app. The base image's CA bundle
# (/etc/ssl/certs/ca-certificates.crt) lets pgguard verify Neon's
# certificate with sslmode=verify-full.
COPY --from=pgguard /usr/local/bin/pgguard /usr/local/bin/pgguard
COPY deploy/fly/pgguard.toml /etc/pgguard/pgguard.toml
ENV PGGUARD_CONFIG=/etc/pgguard/pgguard.toml

# fly.toml's [processes] override this; `docker run` uses it.
CMD ["pgguard", "run", "--", "gunicorn", "--bind", "[::]:8080", "app:app"]

//! Whole Dockerfiles of the kind people write, planned end to end.

use std::collections::BTreeMap;

use ember_dockerfile::{plan, StepKind};

const WEB_APP: &str = r#"# syntax=docker/dockerfile:1
# A Python web service on the managed Debian base.
ARG DEBIAN_VERSION=2025.01
FROM debian12-minimal:${DEBIAN_VERSION}

LABEL org.opencontainers.image.title="orders service" \
      org.opencontainers.image.version="${APP_VERSION:-dev}"

ARG APP_VERSION=0.0.0
ARG PIP_INDEX
ENV PYTHONUNBUFFERED=1 \
    APP_HOME=/srv/orders \
    PATH=/srv/orders/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    # curl only for the health probe
    && apt-get install -y --no-install-recommends python3 python3-venv curl \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --home-dir "$APP_HOME" orders
WORKDIR $APP_HOME
COPY --chown=orders:orders requirements.txt ./
RUN python3 -m venv .venv && .venv/bin/pip install ${PIP_INDEX:+--index-url "$PIP_INDEX"} -r requirements.txt
COPY --chown=orders:orders src/ ./src/
ADD static.tar.gz /srv/static/

USER orders
EXPOSE 8000/tcp 9100
STOPSIGNAL SIGINT
ENTRYPOINT ["python3", "-m", "orders"]
CMD ["--port", "8000"]
"#;

#[test]
fn a_web_service_dockerfile() {
    let args = BTreeMap::from([("APP_VERSION".to_string(), "1.4.2".to_string())]);
    let built = plan(WEB_APP, &args).unwrap();

    assert_eq!(built.base.name, "debian12-minimal");
    assert_eq!(built.base.version.as_deref(), Some("2025.01"));
    assert_eq!(built.base.line, 4);

    let summary: Vec<(usize, &str)> = built
        .steps
        .iter()
        .map(|s| (s.line, s.instruction.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (16, "RUN apt-get update     && apt-get install -y --no-install-recommends python3 python3-venv curl     && rm -rf /var/lib/apt/lists/*"),
            (21, "RUN useradd --create-home --home-dir \"$APP_HOME\" orders"),
            (22, "WORKDIR /srv/orders"),
            (23, "COPY --chown=orders:orders requirements.txt /srv/orders/"),
            (24, "RUN python3 -m venv .venv && .venv/bin/pip install ${PIP_INDEX:+--index-url \"$PIP_INDEX\"} -r requirements.txt"),
            (25, "COPY --chown=orders:orders src/ /srv/orders/src/"),
            (26, "ADD static.tar.gz /srv/static/"),
        ]
    );

    let StepKind::Run {
        argv,
        env,
        workdir,
        user,
    } = &built.steps[4].kind
    else {
        panic!("{:?}", built.steps[4]);
    };
    assert_eq!(&argv[..4], ["/bin/bash", "-o", "pipefail", "-c"]);
    assert_eq!(workdir, "/srv/orders");
    assert_eq!(user, &None);
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    // ENV first, then the ARG with a value; PIP_INDEX has none, so it is unset.
    assert_eq!(
        names,
        ["PYTHONUNBUFFERED", "APP_HOME", "PATH", "APP_VERSION"]
    );
    assert!(env.contains(&("APP_VERSION".to_string(), "1.4.2".to_string())));

    let StepKind::Copy {
        extract_archives, ..
    } = &built.steps[6].kind
    else {
        panic!()
    };
    assert!(extract_archives);

    let config = &built.config;
    // The LABEL comes before ARG APP_VERSION, so it sees no value yet.
    assert_eq!(
        config
            .labels
            .get("org.opencontainers.image.version")
            .map(String::as_str),
        Some("dev")
    );
    assert_eq!(
        config
            .labels
            .get("org.opencontainers.image.title")
            .map(String::as_str),
        Some("orders service")
    );
    assert_eq!(config.env.len(), 3);
    assert_eq!(config.workdir, "/srv/orders");
    assert_eq!(config.user.as_deref(), Some("orders"));
    assert_eq!(config.exposed_ports, [8000, 9100]);
    assert_eq!(config.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(
        config.command().unwrap(),
        ["python3", "-m", "orders", "--port", "8000"]
    );
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
}

#[test]
fn the_repository_examples_plan() {
    let hello = include_str!("../../../../examples/hello-http/Dockerfile");
    let built = plan(hello, &BTreeMap::new()).unwrap();
    assert_eq!(built.base.name, "busybox");
    assert_eq!(built.config.exposed_ports, [8080]);
    assert_eq!(
        built.config.command().unwrap(),
        ["/bin/sh", "/app/start.sh"]
    );
    let StepKind::Copy { sources, dest, .. } = &built.steps[0].kind else {
        panic!()
    };
    assert_eq!((sources.len(), dest.as_str()), (2, "/app/"));

    let python = include_str!("../../../../examples/python-counter/Dockerfile");
    let built = plan(python, &BTreeMap::new()).unwrap();
    assert_eq!(built.base.name, "debian12-minimal");
    assert_eq!(built.config.workdir, "/app");
    assert_eq!(built.config.command().unwrap(), ["python3", "app.py"]);
}

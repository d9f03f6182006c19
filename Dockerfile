# siot in a container: `docker build -t siot . && docker run -p 4222:4222 -v siot-data:/data siot`
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY siot siot
COPY nodes nodes
COPY sync sync
COPY store store
COPY cmd cmd
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 siot && mkdir /data && chown siot:siot /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER siot
VOLUME ["/data"]
# NATS clients, nats-server HTTP monitoring, MQTT (when --mqtt-port 1883 is given)
EXPOSE 4222 8222 1883
ENV SIOT_DATA=/data SIOT_NATS_HOST=0.0.0.0
ENTRYPOINT ["siot"]
CMD ["serve"]

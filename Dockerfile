# dicom-node: the AI modality (CPU build). Research use only, not for diagnosis.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/dicom-node

COPY pyproject.toml README.md constraints.txt ./
COPY dicom_node ./dicom_node
COPY models ./models
RUN pip install --upgrade pip && pip install -c constraints.txt '.[cpu]'

# Shipped models live next to the package; results and the job log go to the volume.
ENV DICOM_NODE_MODELS_DIR=/opt/dicom-node/models \
    DICOM_NODE_DATA_DIR=/data \
    DICOM_NODE_HOST=0.0.0.0 \
    DICOM_NODE_HTTP_HOST=0.0.0.0
RUN useradd --uid 1000 --create-home node && mkdir -p /data && chown node /data
VOLUME ["/data"]
EXPOSE 11112 8110
USER node
ENTRYPOINT ["dicom-node"]
CMD ["serve"]

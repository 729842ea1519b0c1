FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 RECSITE_VAR_DIR=/var/lib/recsite
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 curl && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
# collectstatic signs nothing: a throwaway key for this step only, the image carries none (compose passes the real one).
RUN mkdir -p /var/lib/recsite && SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0
EXPOSE 8000
CMD ["gunicorn", "recsite.wsgi:application", "--config", "gunicorn.conf.py", "--bind", "0.0.0.0:8000"]

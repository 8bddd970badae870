"""gcp-storage-emulator on localhost, with the one header TensorStore needs.

    python tests/gcs_emulator.py PORT BUCKET

Real GCS answers a media download with `x-goog-generation` (the object's
version); TensorStore's gcs driver, which Orbax writes through, reads it to
version the OCDBT manifest and fails with "Malformed StorageGeneration"
without it. The emulator (pure Python, from PyPI) does not send it, so this
launcher adds it, from the generation the emulator keeps for the object,
before the server binds its routes. Nothing else is changed.
"""
import sys

from gcp_storage_emulator.handlers import objects


def _with_generation(download):
  def wrapped(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"],
                                 request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", 1))
    except Exception:  # pylint: disable=broad-except
      pass  # not found: the download answers 404 itself
    return download(request, response, storage, *args, **kwargs)
  return wrapped


def main(port: int, bucket: str) -> None:
  objects.download = _with_generation(objects.download)
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  server.create_server("127.0.0.1", port, in_memory=True,
                       default_bucket=bucket).run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])

# Paths and input helpers shared by the rules. Every path of the artifact contract is here.
from streamline.download import model_slug


def model():
    return config.get("model_alias") or model_slug(config["model_name"])


def model_dir(m=None):
    return f"resources/models/{m or model()}"


def data_dir(m=None):
    return f"resources/data/{m or model()}/{config['data']['name']}"


def calibration_manifest(m=None):
    return f"results/{m or model()}/calibration.json"


def layer_intervals():
    n = config["layer_intervals"]
    return sorted(set(n)) if isinstance(n, list) else [n]


def all_targets():
    return expand("results/{model}/n{n}/scores.json", model=model(), n=layer_intervals())


wildcard_constraints:
    model=r"[A-Za-z0-9._-]+",
    n=r"\d+",

"""`pointrl traces`: a run's traces (rl/runtime/traces.py) in the browser and as JSON. `app.py` is the FastAPI app
(the reward service's stack and token auth, loopback by default): the step and sample listings with their filters,
one sample's tokens with their fields, advantages and log-probs, and its object (`objects.py`: the cloud, the image
and both answers' geometry, as the rewards score them). The pages (`*.html`) draw with three.js, vendored in
`vendor/` by `vendor.sh` (pinned; no CDN at run time)."""

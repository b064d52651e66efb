# Two-command set-up:  make venv && make test   (or: make demo)
# All ROS traffic of tests and demos stays on loopback (see tocpl_ros/ros/environment.py).

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp
# Re-run the installs only when one of these changes.
INSTALL_INPUTS := requirements.txt setup.py $(wildcard setup.cfg pyproject.toml)

# Per-run DDS domain (kept if the caller exported one), in 1..100, never 0.
ROS_DOMAIN_ID_SH := $${ROS_DOMAIN_ID:-$$(( $$$$ % 100 + 1 ))}
# Tests always stay on loopback; the demo keeps an explicit caller setting.
TEST_ENV := ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=$(ROS_DOMAIN_ID_SH)
DEMO_ENV := ROS_AUTOMATIC_DISCOVERY_RANGE=$${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST} \
            ROS_DOMAIN_ID=$(ROS_DOMAIN_ID_SH)

PYTEST_ARGS ?=

.PHONY: venv test test-fast lint demo clean distclean

venv: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Editable install: the venv always runs the working tree (tests, tocpl-solve), so it
# only needs re-installing when requirements.txt / setup.py change (new console scripts,
# packages or data_files). Checked: pip 23.2 (bundled with python 3.11) and 26.x both do
# a PEP 660 editable install with the console script in .venv/bin, setup.cfg
# notwithstanding; pip is still upgraded first for the resolver of recent releases.
$(STAMP): $(INSTALL_INPUTS) | $(VPY)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install -r requirements.txt
	$(VPY) -m pip install -e .
	touch $@

test: venv
	export $(TEST_ENV) && $(VPY) -m pytest -q test $(PYTEST_ARGS)

# The ROS-free, quick part: no training budget (marker slow) and no rclpy node or ROS process
# (marker ros, set by test/conftest.py on every test that takes a ROS domain from its fixtures).
test-fast: venv
	export $(TEST_ENV) && $(VPY) -m pytest -q test -m "not slow and not ros" $(PYTEST_ARGS)

# ruff, configured in pyproject.toml ([tool.ruff]); also enforced by test/test_lint.py.
lint: venv
	$(VPY) -m ruff check .

# Trains a small UR5 policy into runs/demo (reused if runs/demo/policy.onnx exists), brings up
# the simulated UR5 + policy node, sends 3 targets and prints the precision and loop statistics.
demo: venv
	export $(DEMO_ENV) && $(VENV)/bin/tocpl-demo

clean:
	rm -rf build install log .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

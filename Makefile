# Two commands on a fresh machine: `make demo` and `make test`.
# torch is installed first and explicitly: 2.13.0 has a CPU build on disk, any other pulls CUDA.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo-out

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/medenhance info samples
	$(BIN)/medenhance degrade samples/cr_chest_RG1_J2KI.dcm samples/xray_chest_nih_00009128_000.png \
		--preset xray-lowdose --seed 1 -o $(DEMO)/xray
	$(BIN)/medenhance degrade samples/mr_head_MR1_JPLL.dcm samples/mri_brain_glioma_Te-gl_0063.png \
		--preset mri-rician --seed 1 -o $(DEMO)/mri
	$(BIN)/medenhance evaluate -r $(DEMO)/xray/clean -t noisy=$(DEMO)/xray/degraded -o $(DEMO)/xray/eval
	$(BIN)/medenhance evaluate -r $(DEMO)/mri/clean -t noisy=$(DEMO)/mri/degraded -o $(DEMO)/mri/eval
	@echo "demo outputs in $(DEMO)/ (research use only, not for diagnosis)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache

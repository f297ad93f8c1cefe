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
	$(BIN)/medenhance enhance $(DEMO)/xray/degraded -o $(DEMO)/xray/enhanced --model xray-denoise
	$(BIN)/medenhance enhance $(DEMO)/mri/degraded -o $(DEMO)/mri/enhanced --model mri-denoise
	$(BIN)/medenhance evaluate -r $(DEMO)/xray/clean -d $(DEMO)/xray/degraded \
		-m nlm -m xray-denoise -o $(DEMO)/xray/eval
	$(BIN)/medenhance evaluate -r $(DEMO)/mri/clean -d $(DEMO)/mri/degraded \
		-m nlm -m mri-denoise -o $(DEMO)/mri/eval
	$(BIN)/medenhance report $(DEMO)/xray/eval -o $(DEMO)/xray/report
	$(BIN)/medenhance report $(DEMO)/mri/eval -o $(DEMO)/mri/report
	$(BIN)/medenhance triage samples -m xray-pneumonia -o $(DEMO)/triage/worklist.csv \
		--heatmaps $(DEMO)/triage/heatmaps
	@echo "demo outputs in $(DEMO)/: enhanced images in */enhanced, reports in */report/report.html, a triage worklist in triage/ (research use only, not for diagnosis)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache

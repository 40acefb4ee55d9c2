// The click, end to end, in a real browser: Orthanc Explorer's "Send to DICOM modality" on a
// study the node has not seen, then the node's results opened in OHIF as a person would.
//
// Usage: node click_to_result.js CONFIG.json   (NODE_PATH must hold playwright-core)
// CONFIG: {kind: "xray"|"ct", orthanc, studyId, studyUid, modality, ohif, outDir,
//          resultModalities: ["SR", "OT", ...], timeoutMs}
// Writes screenshots and result-KIND.json (what was seen, with timings) to outDir and prints
// the JSON on the last line.  It reports observations; the pytest side judges them.  Every
// wait is bounded, so a broken page fails in seconds to minutes, never hangs.
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--enable-unsafe-swiftshader',
  '--use-gl=swiftshader', '--disable-dev-shm-usage', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];
const STEP_MS = 30000;

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const result = { kind: config.kind, screenshots: {}, timings: {}, consoleErrors: [] };
const shot = name => path.join(config.outDir, `${config.kind}-${name}.png`);

async function resultSeries(request) {
  const response = await request.get(`${config.orthanc}/studies/${config.studyId}/series`);
  const series = await response.json();
  return series.map(s => ({
    modality: s.MainDicomTags.Modality || '',
    description: s.MainDicomTags.SeriesDescription || '',
    instances: s.Instances.length,
  }));
}

// Polls Orthanc (as the Explorer page would after a refresh) until every expected result
// modality arrived from the node and the instance count held still for a second.
async function waitForResults(request, deadline) {
  let last = -1;
  while (Date.now() < deadline) {
    const series = await resultSeries(request);
    const ours = series.filter(s => s.description.startsWith('AI '));
    const have = new Set(ours.map(s => s.modality));
    const count = ours.reduce((n, s) => n + s.instances, 0);
    if (config.resultModalities.every(m => have.has(m)) && count === last) return series;
    last = config.resultModalities.every(m => have.has(m)) ? count : -1;
    await new Promise(resolve => setTimeout(resolve, 1000));
  }
  throw new Error(`results (${config.resultModalities}) did not reach Orthanc in time`);
}

// OHIF's first-visit tour ("Skip all") and investigational-use banner ("Confirm and hide")
// cover the viewport; dismiss whichever shows up within `ms`.
async function dismissDialogs(page, ms) {
  const labels = ['Skip all', 'Confirm and hide'];
  const deadline = Date.now() + ms;
  while (labels.length && Date.now() < deadline) {
    for (const label of [...labels]) {
      const button = page.getByText(label, { exact: true });
      if (await button.isVisible().catch(() => false)) {
        await button.click({ timeout: 5000 }).catch(() => {});
        labels.splice(labels.indexOf(label), 1);
      }
    }
    await page.waitForTimeout(250);
  }
}

async function thumbnails(page) {
  return page.locator('[data-cy^="study-browser-thumbnail"]').evaluateAll(nodes => nodes.map(n => ({
    modality: n.querySelector('[data-cy="series-modality-label"]')?.innerText.trim() || '',
    description: n.querySelector('[data-cy="series-description-label"]')?.innerText.trim() || '',
    hasImage: n.getAttribute('data-cy') === 'study-browser-thumbnail',
  })));
}

const thumbnail = (page, description) =>
  page.locator('[data-cy^="study-browser-thumbnail"]', { hasText: description }).first();

// Double-click a series into the viewport, after any late first-visit dialog is gone.
async function openSeries(page, description) {
  await dismissDialogs(page, 300);
  await thumbnail(page, description).dblclick({ timeout: STEP_MS });
}
const viewport = page => page.locator('[data-cy="viewport-pane"]').first();

// The SR annotations cornerstone draws in the viewport's SVG layer: shapes and their text.
async function drawnAnnotations(page) {
  return viewport(page).evaluate(pane => {
    const svg = pane.querySelector('svg');
    if (!svg) return { shapes: 0, points: 0, text: '' };
    const shapes = [...svg.querySelectorAll('polyline, polygon, path')];
    const points = shapes.reduce((n, s) => n + (s.points ? s.points.numberOfItems : 0), 0);
    // One line per tspan: OHIF writes each measurement of a group as its own line.
    const lines = [...svg.querySelectorAll('tspan')].map(t => t.textContent);
    const text = (lines.length ? lines : [...svg.querySelectorAll('text')].map(t => t.textContent))
      .join('\n');
    return { shapes: shapes.length, points, text };
  });
}

// OHIF starts its cine player on some SC series; its controls would hide the image's caption.
async function closeCine(page) {
  const close = page.locator('[data-cy="cine-player-close"]').first();
  if (await close.isVisible().catch(() => false)) await close.click({ timeout: 5000 }).catch(() => {});
}

async function showSeries(page, description) {
  await openSeries(page, description);
  await page.waitForTimeout(3000);
  await closeCine(page);
  await page.waitForTimeout(500);
}

async function openInExplorerAndClick(page) {
  const url = `${config.orthanc}/app/explorer.html#study?uuid=${config.studyId}`;
  await page.goto(url, { timeout: STEP_MS });
  const send = page.locator('#study').getByRole('link', { name: 'Send to DICOM modality' });
  await send.click({ timeout: STEP_MS });
  const target = page.getByText(config.modality, { exact: true });
  await target.waitFor({ state: 'visible', timeout: STEP_MS });
  await page.screenshot({ path: shot('1-explorer-send') });
  result.screenshots.explorer = shot('1-explorer-send');
  const stored = page.waitForResponse(
    r => r.url().endsWith(`/modalities/${config.modality}/store`), { timeout: STEP_MS });
  result.timings.clickEpochMs = Date.now();
  await target.click({ timeout: STEP_MS });
  result.storeStatus = (await stored).status();
}

async function openOhif(page) {
  await page.goto(`${config.ohif}/viewer?StudyInstanceUIDs=${config.studyUid}`,
    { timeout: STEP_MS * 2 });
  await page.locator('[data-cy^="study-browser-thumbnail"]').first()
    .waitFor({ state: 'visible', timeout: STEP_MS * 2 });
  await dismissDialogs(page, 8000);
  // The first series shows in the viewport once its canvas has drawn the image.
  await page.locator('[data-cy="viewport-pane"] canvas').first()
    .waitFor({ state: 'visible', timeout: STEP_MS });
  await page.waitForTimeout(1500);
  result.thumbnails = await thumbnails(page);
}

async function xray(page) {
  await viewport(page).screenshot({ path: shot('2-radiograph-viewport') });
  result.screenshots.radiographViewport = shot('2-radiograph-viewport');
  await openSeries(page, 'AI report');
  const deadline = Date.now() + STEP_MS;
  let drawn = { shapes: 0, points: 0, text: '' };
  while (Date.now() < deadline) {
    drawn = await drawnAnnotations(page);
    if (drawn.points >= 3 && drawn.text) break;
    await page.waitForTimeout(200);
  }
  result.timings.drawnEpochMs = Date.now();
  result.sr = drawn;
  await page.waitForTimeout(1000); // let the image settle under the annotation
  await page.screenshot({ path: shot('3-sr') });
  await viewport(page).screenshot({ path: shot('3-sr-viewport') });
  result.screenshots.sr = shot('3-sr');
  result.screenshots.srViewport = shot('3-sr-viewport');
  await showSeries(page, 'AI heatmap');
  await viewport(page).screenshot({ path: shot('4-heatmap-viewport') });
  result.screenshots.heatmapViewport = shot('4-heatmap-viewport');
}

async function ct(page) {
  await viewport(page).screenshot({ path: shot('2-ct-viewport') });
  result.screenshots.ctViewport = shot('2-ct-viewport');
  await openSeries(page, 'AI segmentation');
  // OHIF asks before it loads a SEG over its source series.
  await page.getByRole('button', { name: 'Yes', exact: true }).click({ timeout: STEP_MS });
  const rows = page.locator('[data-cy="data-row-title"]');
  if (!(await rows.first().isVisible().catch(() => false))) {
    await page.locator('[data-cy="panelSegmentation-btn"]').click({ timeout: STEP_MS });
  }
  await rows.first().waitFor({ state: 'visible', timeout: STEP_MS });
  result.timings.drawnEpochMs = Date.now();
  result.segments = (await rows.allInnerTexts()).map(t => t.trim());
  // Clicking a segment jumps to its slice: show a slice with lesions, not the lung apex.
  const lesion = rows.filter({ hasText: /opacity|consolidation/i }).first();
  if (await lesion.count()) await lesion.click({ timeout: STEP_MS });
  await page.waitForTimeout(2500);
  result.viewportText = await viewport(page).innerText();
  await page.screenshot({ path: shot('3-seg') });
  await viewport(page).screenshot({ path: shot('3-seg-viewport') });
  result.screenshots.seg = shot('3-seg');
  result.screenshots.segViewport = shot('3-seg-viewport');
  // The SR: what OHIF shows for it (its groups carry no image region: see the test).
  await openSeries(page, 'AI report');
  await page.waitForTimeout(3000);
  result.sr = await drawnAnnotations(page);
  await showSeries(page, 'AI key images');
  await viewport(page).screenshot({ path: shot('4-key-image-viewport') });
  result.screenshots.keyImageViewport = shot('4-key-image-viewport');
}

(async () => {
  fs.mkdirSync(config.outDir, { recursive: true });
  const profile = fs.mkdtempSync(path.join(config.outDir, 'chromium-profile-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS,
    viewport: { width: 1400, height: 900 }, timeout: STEP_MS,
  });
  const page = context.pages()[0] || await context.newPage();
  page.on('console', m => { if (m.type() === 'error') result.consoleErrors.push(m.text().slice(0, 300)); });
  try {
    await openInExplorerAndClick(page);
    await waitForResults(context.request, result.timings.clickEpochMs + config.timeoutMs);
    result.timings.resultsEpochMs = Date.now();
    await openOhif(page);
    await (config.kind === 'ct' ? ct(page) : xray(page));
  } catch (error) {
    result.error = String(error && error.stack || error);
    await page.screenshot({ path: shot('error') }).catch(() => {});
    result.screenshots.error = shot('error');
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
  const text = JSON.stringify(result);
  fs.writeFileSync(path.join(config.outDir, `result-${config.kind}.json`), text);
  console.log(text);
})();

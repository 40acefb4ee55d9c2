// Open a study in OHIF, load the node's SR onto its image, save a screenshot.
// Usage: node screenshot.js URL OUT.png   (needs playwright-core and Debian's chromium)
const { chromium } = require('playwright-core');

(async () => {
  const [url, out] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--enable-unsafe-swiftshader', '--use-gl=swiftshader',
      '--disable-dev-shm-usage', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  await page.goto(url, { waitUntil: 'networkidle', timeout: 120000 });
  await page.waitForTimeout(4000);
  const dismiss = async () => {
    for (const label of ['Skip all', 'Confirm and hide']) {
      const button = page.getByText(label);
      if (await button.count()) { await button.first().click(); await page.waitForTimeout(500); }
    }
  };
  await dismiss();
  const report = page.getByText('AI report', { exact: false });
  if (!(await report.count())) { console.error('no AI report series in this study'); process.exit(1); }
  await report.first().dblclick();
  await page.waitForTimeout(10000);
  await dismiss();
  await page.screenshot({ path: out });
  await browser.close();
})();

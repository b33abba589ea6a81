/** Builds the console page into `outDir` (default dist/console); resolves to each file's size in bytes. */
export function buildConsole(outDir?: string): Promise<Record<'index.html' | 'console.js' | 'console.css', number>>;

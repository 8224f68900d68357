//! `plan`, `render`, `build` and `status`: the pipeline and its record.

use super::*;

pub(super) fn plan(args: PlanArgs) -> Result<i32, AppError> {
    let manifest = Manifest::load(&args.manifest)?;
    let plan = Plan::new(&manifest);
    if args.json {
        print_stdout(&to_json(&plan))?;
    } else {
        print_stdout(&plan.to_text())?;
    }
    Ok(exit::OK)
}

pub(super) fn render(args: RenderArgs) -> Result<i32, AppError> {
    let manifest = Manifest::load(&args.manifest)?;
    let set = TemplateSet::with_overrides(args.templates.templates.as_deref())?;
    let plan = args.templates.plan(&manifest);
    for w in &plan.warnings {
        crate::util::term::warning(w);
    }
    let rendered = crate::render::render_to_dir(&plan, &manifest, &set, &args.out, args.force)?;
    if args.json {
        print_stdout(&to_json(&rendered))?;
    } else {
        let mut text = String::new();
        for f in &rendered.files {
            text.push_str(&format!("{}\n", rendered.dir.join(&f.path).display()));
        }
        print_stdout(&text)?;
        crate::util::term::status(
            "Rendered",
            &format!(
                "{} files into {}",
                rendered.files.len(),
                rendered.dir.display()
            ),
        );
    }
    Ok(exit::OK)
}

/// `--resume DIR`: the options the build started with, recorded in its
/// `build.json`, apply again; flags given now add to them.
fn with_recorded_options(args: &mut BuildArgs) {
    let Some(dir) = &args.resume else { return };
    let Ok(record) = pipeline::BuildRecord::load(dir) else {
        // The pipeline reads the record again and reports what is wrong.
        return;
    };
    let Some(o) = record.options else { return };
    args.no_replicate |= !o.replicate;
    args.no_validate |= !o.validate;
    args.no_boot_check |= !o.boot_check;
    args.no_publish |= !o.publish;
    args.templates.no_vm_checks |= !o.vm_checks;
    args.allow_retired |= o.allow_retired;
    if args.templates.templates.is_none() {
        args.templates.templates = o.templates.map(std::path::PathBuf::from);
    }
    if args.blob_endpoint.is_none() {
        args.blob_endpoint = o.blob_endpoint;
    }
    if args.gallery_version.is_none() {
        args.gallery_version = o.gallery_version;
    }
    args.verify = o.verify;
    args.parallel = o.parallel;
    args.max_requests = o.max_requests;
    args.publish_timeout = o.publish_timeout_s;
}

fn recorded_options(args: &BuildArgs) -> pipeline::RecordedOptions {
    pipeline::RecordedOptions {
        replicate: !args.no_replicate,
        validate: !args.no_validate,
        boot_check: !args.no_boot_check,
        publish: !args.no_publish,
        vm_checks: !args.templates.no_vm_checks,
        allow_retired: args.allow_retired,
        templates: args.templates.templates.as_ref().map(|t| {
            std::path::absolute(t)
                .unwrap_or_else(|_| t.clone())
                .display()
                .to_string()
        }),
        verify: args.verify,
        parallel: args.parallel,
        max_requests: args.max_requests,
        publish_timeout_s: args.publish_timeout,
        blob_endpoint: args.blob_endpoint.clone(),
        gallery_version: args.gallery_version.clone(),
    }
}

pub(super) fn build(mut args: BuildArgs) -> Result<i32, AppError> {
    with_recorded_options(&mut args);
    let mut manifest = Manifest::load(&args.manifest)?;
    if let Some(v) = &args.gallery_version {
        manifest.set_gallery_version(v).map_err(|why| {
            AppError::refused(
                why,
                "pass a version like 1.0.42 with a manifest whose target is \"gallery\"",
            )
        })?;
    }
    let set = TemplateSet::with_overrides(args.templates.templates.as_deref())?;
    let plan = args.templates.plan(&manifest);
    if args.json {
        for w in &plan.warnings {
            crate::util::term::warning(w);
        }
    } else {
        eprint!("{}", plan.to_text());
    }
    if let crate::spec::catalog::AgentStatus::Retired { date, source } = plan.node_agent_status
        && !args.dry_run
        && !args.allow_retired
    {
        return Err(AppError::refused(
            format!(
                "{}: node agent `{}` is retired for new pools since {date} ({source}); Azure Batch would refuse a new pool with this image",
                manifest.path.display(),
                plan.node_agent,
            ),
            format!(
                "for a pool created today build {}; pass --allow-retired to build it anyway (existing pools can still scale)",
                crate::spec::catalog::current_linux(&crate::spec::plan::today())
            ),
        ));
    }
    let packer = Packer::locate(args.packer.as_deref())?;
    let dir = match (&args.resume, &args.out) {
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => {
            // Two builds started in the same second (a rerun after a quick
            // refusal) get their own directories.
            let base = pipeline::default_build_dir(&plan.image, std::time::SystemTime::now());
            (1..100)
                .map(|n| match n {
                    1 => base.clone(),
                    n => std::path::PathBuf::from(format!("{}-{n}", base.display())),
                })
                .find(|d| !d.exists())
                .unwrap_or(base)
        }
    };
    // --timeout: the build is interrupted as Ctrl-C interrupts it, so every
    // stage stops the way it already knows (Packer's clean-up included).
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (timed_out, finished, seconds) = (timed_out.clone(), finished.clone(), args.timeout);
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering::SeqCst;
            std::thread::sleep(std::time::Duration::from_secs(seconds));
            if !finished.load(SeqCst) {
                timed_out.store(true, SeqCst);
                // SAFETY: kill sends SIGINT to this process, whose handler
                // (the build's signal watch) is installed for the whole run.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGINT);
                }
            }
        });
    }
    let result = pipeline::run(
        &manifest,
        &plan,
        BuildOptions {
            dir: dir.clone(),
            force: args.force,
            dry_run: args.dry_run,
            resume: args.resume.is_some(),
            templates: &set,
            packer,
            verbose: args.verbose,
            replicate: !args.no_replicate,
            validate: !args.no_validate,
            boot_check: !args.no_boot_check,
            blob_endpoint: crate::azure::storage::endpoint_template(args.blob_endpoint.as_deref())?,
            parallel: args.parallel,
            max_requests: args.max_requests,
            verify: args.verify,
            show_progress: !args.json,
            publish: !args.no_publish,
            publish_timeout: std::time::Duration::from_secs(args.publish_timeout),
            recorded: recorded_options(&args),
        },
    );
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    let result = result.map_err(|e| {
        if timed_out.load(std::sync::atomic::Ordering::SeqCst)
            && e.category() == crate::util::Category::Cancelled
        {
            AppError::Rejected {
                message: format!(
                    "build stopped after --timeout {} s, as Ctrl-C stops it: {e}",
                    args.timeout
                ),
                hint: Some(format!(
                    "`imgforge build {} --resume {}` continues it (raise --timeout for a longer build)",
                    crate::util::text::shell_quote(&args.manifest.display().to_string()),
                    crate::util::text::shell_quote(&dir.display().to_string())
                )),
            }
        } else {
            e.into()
        }
    });
    match result {
        Ok(record) => {
            if args.json {
                print_stdout(&to_json(&record))?;
            } else {
                if let Some(path) = &record.snippet
                    && let Ok(text) = std::fs::read_to_string(path)
                {
                    print_stdout(&text)?;
                }
                let what = match record.status {
                    BuildStatus::Validated => {
                        "dry run: rendered and validated; nothing was created in Azure".to_string()
                    }
                    _ => format!(
                        "build of {} succeeded in {:.1} s",
                        record.image, record.duration_s
                    ),
                };
                crate::util::term::status(
                    "Finished",
                    &format!(
                        "{what}\n{:>12} {}/{}",
                        "Record",
                        record.build_dir,
                        pipeline::RECORD_FILE
                    ),
                );
            }
            Ok(exit::OK)
        }
        Err(e) => {
            if args.json {
                // Pipelines get the record even on failure; it was written before the error.
                if let Ok(text) = std::fs::read_to_string(dir.join(pipeline::RECORD_FILE)) {
                    print_stdout(&text)?;
                    return Err(AppError::Reported(Box::new(e)));
                }
            }
            Err(e)
        }
    }
}

pub(super) fn status(dir: Option<&std::path::Path>, json: bool) -> Result<i32, AppError> {
    let newest;
    let dir = match dir {
        Some(d) => d,
        None => {
            let builds = std::path::Path::new(".imgforge/builds");
            let found = pipeline::clean::scan(builds)
                .ok()
                .and_then(|b| b.into_iter().rfind(|b| !b.leftover));
            let Some(found) = found else {
                return Err(AppError::refused(
                    format!("no build under {}", builds.display()),
                    "name the build directory (`imgforge status DIR`), or run `imgforge build` here first",
                ));
            };
            newest = found.path;
            &newest
        }
    };
    let record = pipeline::BuildRecord::load(dir)?;
    if json {
        print_stdout(&to_json(&record))?;
    } else {
        print_stdout(&pipeline::status_text(&record))?;
    }
    Ok(match record.status {
        BuildStatus::Succeeded | BuildStatus::Validated => exit::OK,
        BuildStatus::Cancelled => exit::CANCELLED,
        BuildStatus::Running | BuildStatus::Failed => exit::FAILED,
    })
}
